"""Every figure of the project: confusion matrix, labelled face grids, training curves, emotions
over time, and the data-visualisation stage (faces per emotion, their augmentations)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files and TensorBoard only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fer import EMOTION_COLORS, EMOTIONS  # noqa: E402
from fer.data.augment import to_float  # noqa: E402

log = logging.getLogger(__name__)


def confusion_matrix_figure(matrix: torch.Tensor, title: str = "") -> plt.Figure:
    """Row-normalised confusion matrix (recall on the diagonal), with raw counts in each cell."""
    counts = matrix.cpu().numpy().astype(int)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(EMOTIONS)), yticks=range(len(EMOTIONS)), xticklabels=EMOTIONS,
           yticklabels=EMOTIONS, xlabel="predicted", ylabel="true", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for label in (*ax.get_xticklabels(), *ax.get_yticklabels()):  # each emotion on its palette colour
        label.set_bbox({"facecolor": EMOTION_COLORS[label.get_text()], "alpha": 0.4, "edgecolor": "none", "pad": 1.5})
    for (i, j), rate in np.ndenumerate(rates):
        ax.text(j, i, f"{rate:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=7,
                color="white" if rate > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def image_grid(
    images: torch.Tensor,
    labels: Sequence[int],
    predictions: Sequence[int] | None = None,
    columns: int = 8,
    title: str = "",
) -> plt.Figure:
    """Faces ((N, H, W) uint8 or (N, 1, H, W) float in [0, 1]) titled with their label, and with
    the prediction when given (green when right, red when wrong)."""
    images = images.detach().cpu().float()
    if images.dim() == 4:
        images = images[:, 0] * 255
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(images[k].numpy(), cmap="gray", vmin=0, vmax=255)
        text, color = EMOTIONS[labels[k]], "black"
        if predictions is not None:
            text = f"{EMOTIONS[labels[k]]}\n→ {EMOTIONS[predictions[k]]}"
            color = "green" if predictions[k] == labels[k] else "red"
        ax.set_title(text, fontsize=7, color=color)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves_figure(history: Mapping[str, Sequence[float]]) -> plt.Figure:
    """Per-epoch curves: losses on the left, the other metrics (accuracy, F1) on the right."""
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in sorted(history.items()):
        ax = loss_ax if "loss" in name else metric_ax
        ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
    for ax, ylabel in ((loss_ax, "loss"), (metric_ax, "score")):
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def emotion_timeline_figure(tracks: Mapping[int, tuple[Sequence[float], np.ndarray]], title: str = "") -> plt.Figure:
    """Probability of each emotion over time, one panel per tracked face: `tracks` maps a track id
    to (times in seconds, (T, 7) probabilities)."""
    fig, axes = plt.subplots(len(tracks), 1, figsize=(11, 2.4 * len(tracks) + 0.8), squeeze=False, sharex=True)
    for ax, (track_id, (times, probs)) in zip(axes[:, 0], tracks.items()):
        for k, name in enumerate(EMOTIONS):
            ax.plot(times, probs[:, k], label=name, linewidth=1.2, color=EMOTION_COLORS[name])
        ax.set(ylim=(0, 1), ylabel="probability", title=f"face #{track_id}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def visualize(cfg: DictConfig) -> list[Path]:
    """Write `samples.png` (a row of faces per emotion from `cfg.split`) and `augmented.png`
    (each row one face, then its training-time augmentations) into the run folder."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit" if cfg.split == "train" else "validate")
    split = datamodule.splits[cfg.split]
    k = cfg.per_row
    generator = torch.Generator().manual_seed(cfg.seed)

    picks = []
    for label in range(len(EMOTIONS)):
        members = (split.labels == label).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:k]])
    picks = torch.cat(picks)
    out = Path(cfg.paths.output_dir)
    paths = [save(image_grid(split.images[picks], split.labels[picks].tolist(), columns=k,
                             title=f"{cfg.split}: {k} faces per emotion"), out / "samples.png")]

    faces = picks[torch.randperm(len(picks), generator=generator)[: cfg.augmented_rows]]
    torch.manual_seed(cfg.seed)
    rows = []
    for i in faces.tolist():
        face = split.images[i : i + 1]
        rows += [datamodule.eval_transform(face), datamodule.augment(to_float(face.expand(k - 1, -1, -1)))]
    labels = split.labels[faces].repeat_interleave(k).tolist()
    paths.append(save(image_grid(torch.cat(rows), labels, columns=k,
                                 title="first column: the face as evaluated; then training augmentations"),
                      out / "augmented.png"))
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths
