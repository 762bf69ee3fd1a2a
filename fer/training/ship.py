"""The ship stage: turn a trained checkpoint into the package's default model and its model card.

The route every shipped model takes: score the checkpoint on PublicTest through the same
`FaceClassifier` that prediction uses, fit a temperature there (the PublicTest split is the
selection split; PrivateTest stays untouched), and write a small weights-only checkpoint plus a
JSON model card with the training command, config, commit, metrics and calibration error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.classification import multiclass_calibration_error

from fer import EMOTIONS, FERError
from fer.checkpoints import file_sha256
from fer.data.datamodule import FERDataModule
from fer.data.fer2013 import save_atomic, write_text_atomic
from fer.models.deploy import load_face_classifier
from fer.training.evaluate import score

log = logging.getLogger(__name__)

PREPROCESSING_KEYS = ("align", "align_options", "image_size")
"""The data options a checkpoint needs to see faces as in training; where data lives is not one."""


def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(log_probs / T) (temperature scaling, Guo et
    al. 2017). Log-probabilities work as logits: they differ from them by a per-row constant."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(log_probs / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(multiclass_calibration_error(probs, labels, len(EMOTIONS), n_bins=15, norm="l1"))


def calibrate(probs: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """Temperature and ECE before/after. ECE after fitting on the same images is optimistic, so
    a two-fold estimate (fit on one half, measure on the other) is reported beside it."""
    log_probs = probs.clamp_min(1e-12).log()
    temperature = fit_temperature(log_probs, labels)
    halves = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).chunk(2)
    held_out = []
    for fit_on, measure_on in (halves, halves[::-1]):
        t = fit_temperature(log_probs[fit_on], labels[fit_on])
        held_out.append(expected_calibration_error((log_probs[measure_on] / t).softmax(1), labels[measure_on]))
    return {
        "temperature": round(temperature, 4),
        "ece_before": round(expected_calibration_error(probs, labels), 4),
        "ece_after": round(expected_calibration_error((log_probs / temperature).softmax(1), labels), 4),
        "ece_after_two_fold": round(sum(held_out) / 2, 4),
        "ece_bins": 15,
    }


def training_record(ckpt_path: Path, training: dict) -> dict:
    """How the checkpoint was made: the run's Hydra overrides and config (saved by Hydra in the
    run folder) plus what the run folder cannot know (`training.*`: commit, machine, wall time)."""
    hydra_dir = ckpt_path.parent.parent / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise FERError(f"{ckpt_path} is not inside a Hydra run folder ({hydra_dir} is missing): "
                       "its training command and config cannot be recorded")
    overrides = OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml"))
    config = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"))
    return {
        "command": " ".join(["python scripts/train.py", *overrides]),
        **training,
        "config": {key: config.get(key) for key in ("seed", "data", "model", "trainer")},
    }


def ship_model(cfg: DictConfig) -> dict:
    """Write `cfg.out_dir`/emotion_classifier.ckpt and model_card.json from `cfg.ckpt_path`."""
    ckpt_path = Path(cfg.ckpt_path)
    face_classifier, checkpoint = load_face_classifier(ckpt_path)
    training = training_record(ckpt_path, OmegaConf.to_container(cfg.training, resolve=True))
    preprocessing = {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if k in PREPROCESSING_KEYS}

    datamodule = FERDataModule(**preprocessing, **OmegaConf.to_container(cfg.data, resolve=True), eval_split="val")
    datamodule.setup("validate")
    public_test = datamodule.splits["val"]
    with torch.inference_mode():
        probs = torch.cat([face_classifier(batch) for batch in public_test.images.split(cfg.data.eval_batch_size)])
    metrics = score(probs, public_test.labels)
    calibration = calibrate(probs, public_test.labels)

    out_dir = Path(cfg.out_dir)
    model_path = out_dir / "emotion_classifier.ckpt"
    shipped = {
        "state_dict": face_classifier.model.state_dict(),
        "hyper_parameters": checkpoint["hyper_parameters"],
        "datamodule_hyper_parameters": preprocessing,
        "temperature": calibration["temperature"],
        "pytorch-lightning_version": checkpoint.get("pytorch-lightning_version"),
    }
    save_atomic(shipped, model_path)
    card = {
        "model": model_path.name,
        "sha256": file_sha256(model_path),
        "size_bytes": model_path.stat().st_size,
        "parameters": sum(p.numel() for p in face_classifier.parameters()),
        "classes": list(EMOTIONS),
        "input": f"aligned 48x48 grayscale face (fer.data.align), centre crop {preprocessing.get('image_size', 48)}",
        "source_checkpoint": str(ckpt_path),
        "training": training,
        "preprocessing": preprocessing,
        "public_test": {
            "note": "PublicTest selected the checkpoint and fitted the temperature: a validation figure",
            "n": metrics["n"],
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "recall": {name: round(m["recall"], 4) for name, m in metrics["per_class"].items()},
        },
        "calibration": calibration,
    }
    card_path = out_dir / "model_card.json"
    write_text_atomic(json.dumps(card, indent=2) + "\n", card_path)
    log.info("wrote %s (%.1f MiB) and %s", model_path, card["size_bytes"] / 2**20, card_path)
    print(f"accuracy={card['public_test']['accuracy']:.4f} macro_f1={card['public_test']['macro_f1']:.4f} "
          f"temperature={calibration['temperature']:.3f} ece {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    return card
