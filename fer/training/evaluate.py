"""The evaluation stage: score a checkpoint on a split and write metrics, report and figures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from fer import EMOTIONS, FERError
from fer.data.datamodule import FERDataModule, preprocessing_of
from fer.models.deploy import load_runtime
from fer.reports.figures import confusion_matrix_figure, image_grid, save

log = logging.getLogger(__name__)

SPLIT_NAMES = {"val": "PublicTest", "test": "PrivateTest"}


def score(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix."""
    k = len(EMOTIONS)
    per_class = {
        "precision": multiclass_precision(probs, labels, k, average="none"),
        "recall": multiclass_recall(probs, labels, k, average="none"),
        "f1": multiclass_f1_score(probs, labels, k, average="none"),
    }
    return {
        "n": len(labels),
        "accuracy": multiclass_accuracy(probs, labels, k, average="micro").item(),
        "macro_f1": multiclass_f1_score(probs, labels, k, average="macro").item(),
        "per_class": {
            name: {**{m: v[i].item() for m, v in per_class.items()}, "support": int((labels == i).sum())}
            for i, name in enumerate(EMOTIONS)
        },
        "confusion_matrix": multiclass_confusion_matrix(probs, labels, k).tolist(),
    }


def classification_report(metrics: dict) -> str:
    lines = [f"{'':>10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:>10} {m['precision']:9.4f} {m['recall']:9.4f} {m['f1']:9.4f} {m['support']:9d}")
    lines.append(f"\n{'accuracy':>10} {metrics['accuracy']:39.4f} {metrics['n']:9d}")
    lines.append(f"{'macro F1':>10} {metrics['macro_f1']:39.4f} {metrics['n']:9d}")
    return "\n".join(lines) + "\n"


def predict_member(path: str, cfg: DictConfig) -> tuple[torch.Tensor, dict, FERDataModule]:
    """One checkpoint's class probabilities on `cfg.split` as the default prediction path computes
    them for a face (the same runtime, its ONNX graph where prediction would run it): the `cfg.tta`
    views (default: the checkpoint's own), then its class biases and temperature unless `cfg.adjust`
    is off; what ran; and the datamodule that prepared the faces as that checkpoint was trained."""
    try:
        runtime = load_runtime(path, cfg.tta, cfg.adjust, cfg.device, cfg.data.eval_batch_size)
    except ValueError as error:
        raise FERError(f"{path}: {error}") from error
    # how the faces were prepared comes from the checkpoint; where they are, from this config
    data_options = {**preprocessing_of(runtime.checkpoint), **OmegaConf.to_container(cfg.data, resolve=True)}
    try:
        datamodule = FERDataModule(**{**data_options, "eval_split": cfg.split})
    except FERError as error:
        raise FERError(f"{path}: {error}") from error
    datamodule.setup("predict")
    probs = torch.from_numpy(runtime(datamodule.splits[cfg.split].images.numpy()))
    return probs, {"tta": runtime.classifier.tta, "runtime": runtime.description}, datamodule


def evaluate(cfg: DictConfig) -> dict:
    """Score `cfg.ckpt_path` on `cfg.split` (val = PublicTest, test = PrivateTest or `data.test_dir`)
    as prediction would classify those faces (`tta=none adjust=false`: the bare net). A list of checkpoints is an ensemble: the mean of the
    members' probabilities, each member preparing the faces as it was trained."""
    if cfg.split not in SPLIT_NAMES:
        raise FERError(f"split must be one of {list(SPLIT_NAMES)}, got {cfg.split!r}")
    paths = [cfg.ckpt_path] if isinstance(cfg.ckpt_path, str) else list(cfg.ckpt_path)
    if not paths:
        raise FERError("ckpt_path is an empty list: give one checkpoint, or several for an ensemble")
    # every member reads the same split of this config's data (alignment keeps order and labels)
    predictions = [predict_member(path, cfg) for path in paths]
    datamodule = predictions[0][2]  # its view of the faces draws predictions.png
    split = datamodule.splits[cfg.split]
    members = []
    for path, (probs, how, _) in zip(paths, predictions):
        member = score(probs, split.labels)
        members.append({"checkpoint": str(path), **how, "accuracy": member["accuracy"], "macro_f1": member["macro_f1"]})
        log.info("%s (tta=%s, %s): accuracy=%.4f macro_f1=%.4f", path, how["tta"], how["runtime"], member["accuracy"], member["macro_f1"])
    probs = torch.stack([probs for probs, _, _ in predictions]).mean(dim=0)

    source = cfg.data.test_dir if cfg.split == "test" and cfg.data.test_dir else SPLIT_NAMES[cfg.split]
    metrics = {"split": cfg.split, "source": str(source), "tta": cfg.tta, "adjust": cfg.adjust, "members": members,
               **score(probs, split.labels)}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "classification_report.txt").write_text(classification_report(metrics))
    save(confusion_matrix_figure(torch.tensor(metrics["confusion_matrix"]), f"{source}: accuracy {metrics['accuracy']:.4f}"),
         out / "confusion_matrix.png")
    shown = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[: cfg.grid_size]
    save(image_grid(datamodule.eval_transform(split.images[shown]), split.labels[shown].tolist(),
                    probs[shown].argmax(1).tolist(), title=f"{source}: true → predicted"),
         out / "predictions.png")
    log.info("wrote metrics.json, classification_report.txt, confusion_matrix.png, predictions.png to %s", out)
    print(f"accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} n={metrics['n']}")
    return metrics
