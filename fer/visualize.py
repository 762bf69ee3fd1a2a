"""The data-visualisation stage: what the model sees, per emotion and after augmentation."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fer import EMOTIONS
from fer.data.augment import to_float
from fer.viz import image_grid, save

log = logging.getLogger(__name__)


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
