"""The ship stage: turn a trained checkpoint into the package's default model and its model card.

The route every shipped model takes: score the checkpoint on PublicTest through the same
`FaceClassifier` that prediction uses; fit there the per-class biases of post-hoc logit
adjustment (the most macro-F1 for at most `max_accuracy_drop` of accuracy) and then a
temperature (PublicTest is the selection split; PrivateTest stays untouched); write a small
weights-only checkpoint that carries both, its ONNX graph (int8 where that keeps PublicTest
accuracy), and a JSON model card with the training command, config, commit, metrics and
calibration error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error, multiclass_f1_score

from fer import ASSETS, EMOTIONS, FERError
from fer.checkpoints import file_sha256
from fer.data.datamodule import FERDataModule
from fer.data.fer2013 import save_atomic, write_text_atomic
from fer.models.deploy import FaceClassifier, adjust_probabilities, load_face_classifier, onnx_session
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


def fit_class_bias(probs: torch.Tensor, labels: torch.Tensor, max_accuracy_drop: float = 0.005,
                   grid: torch.Tensor | None = None, rounds: int = 3) -> list[float]:
    """Per-class biases b for argmax(log p + b) that maximise macro-F1 while accuracy stays within
    `max_accuracy_drop` of the unadjusted one: coordinate ascent, one class at a time over `grid`."""
    grid = torch.arange(-3, 3.001, 0.05) if grid is None else grid
    log_probs, k = probs.clamp_min(1e-12).log(), probs.shape[1]

    def measure(bias: torch.Tensor) -> tuple[float, float]:
        predicted = (log_probs + bias).argmax(1)
        return (float(multiclass_f1_score(predicted, labels, k, average="macro")),
                float(multiclass_accuracy(predicted, labels, k, average="micro")))

    bias = torch.zeros(k)
    best_f1, accuracy = measure(bias)
    floor = accuracy - max_accuracy_drop
    for _ in range(rounds):
        improved = False
        for c in range(k):
            for value in grid:
                candidate = bias.clone()
                candidate[c] = value
                f1, acc = measure(candidate)
                if acc >= floor and f1 > best_f1 + 1e-6:
                    bias, best_f1, improved = candidate, f1, True
        if not improved:
            break
    return [round(float(b), 4) for b in bias - bias.mean()]


def summary(metrics: dict) -> dict:
    return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
            "recall": {name: round(m["recall"], 4) for name, m in metrics["per_class"].items()}}


def held_out_bias_gain(probs: torch.Tensor, labels: torch.Tensor, max_accuracy_drop: float, seed: int = 0) -> dict:
    """Two-fold estimate of what the biases do to faces they were not fitted on: fit on one half of
    PublicTest, measure on the other, both ways; mean accuracy and macro-F1 before and after."""
    halves = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).chunk(2)
    before, after = [], []
    for fit_on, measure_on in (halves, halves[::-1]):
        bias = fit_class_bias(probs[fit_on], labels[fit_on], max_accuracy_drop)
        before.append(score(probs[measure_on], labels[measure_on]))
        after.append(score(adjust_probabilities(probs[measure_on], bias), labels[measure_on]))
    mean = lambda runs, key: round(sum(r[key] for r in runs) / 2, 4)  # noqa: E731
    return {f"{key}_{when}": mean(runs, key) for when, runs in (("before", before), ("after", after))
            for key in ("accuracy", "macro_f1")}


def write_onnx(classifier: FaceClassifier, model_path: Path, source: Path, cfg: DictConfig, preprocessing: dict,
               public_test_faces: torch.Tensor, labels: torch.Tensor, reference: dict) -> dict:
    """`model_path` with suffix .onnx: the int8 graph where its PublicTest accuracy and macro-F1 are
    within `cfg.onnx.max_int8_accuracy_drop` of PyTorch's (`reference`), else fp32. The graph says it
    was made from the checkpoint at `model_path`, to be installed as `source`. Returns its card entry
    with the figures of both precisions."""
    from fer.training.export import export_onnx, graph_metadata, quantize_int8, real_faces

    faces, tmp, drop = public_test_faces.numpy(), model_path.parent, cfg.onnx.max_int8_accuracy_drop
    fp32 = export_onnx(classifier, tmp / "fp32.onnx", graph_metadata(classifier, model_path, source))
    calibration = real_faces(cfg.data.root, cfg.data.cache_dir, "train", cfg.onnx.calibration_size, preprocessing)
    int8 = quantize_int8(fp32, tmp / "int8.onnx", calibration)
    figures = {name: summary(score(torch.from_numpy(onnx_session(path).run(None, {"faces": faces})[0]), labels))
               for name, path in (("fp32", fp32), ("int8", int8))}
    keeps = all(figures["int8"][key] >= reference[key] - drop for key in ("accuracy", "macro_f1"))
    precision = "int8" if keeps else "fp32"
    os.replace({"fp32": fp32, "int8": int8}[precision], model_path.with_suffix(".onnx"))
    return {"file": model_path.with_suffix(".onnx").name, "precision": precision,
            "size_bytes": model_path.with_suffix(".onnx").stat().st_size, "public_test": figures}


LOCAL_PATH = re.compile(r"(?<![\w.$}>])/(?:[^\s/'\",]+/)*([^\s/'\",]+)")


def portable(value):
    """A card's strings without this machine's folders: a path inside the package's assets becomes
    `<fer/assets>/<its path there>`, every other absolute path `<local>/<its last part>` (a
    checkpoint's name, the dataset folder's name), so a shipped card names no private path."""
    if isinstance(value, str):
        return LOCAL_PATH.sub(r"<local>/\1", value.replace(str(ASSETS), "<fer/assets>"))
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item) for item in value]
    return value


def training_record(ckpt_path: Path, training: dict, script: str = "scripts/train.py") -> dict:
    """How the checkpoint was made: the run's Hydra overrides and config (saved by Hydra in the
    run folder of `script`) plus what the run folder cannot know (`training.*`: commit, machine, wall time)."""
    hydra_dir = ckpt_path.parent.parent / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        raise FERError(f"{ckpt_path} is not inside a Hydra run folder ({hydra_dir} is missing): "
                       "its training command and config cannot be recorded")
    overrides = OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml"))
    config = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"))
    return {
        "command": " ".join([f"python {script}", *overrides]),
        **training,
        "config": {key: config.get(key) for key in ("seed", "data", "model", "trainer")},
    }


def ship_model(cfg: DictConfig) -> dict:
    """Write `cfg.out_dir`/emotion_classifier.ckpt (+ .onnx) and model_card.json from `cfg.ckpt_path`."""
    ckpt_path = Path(cfg.ckpt_path)
    trained, checkpoint = load_face_classifier(ckpt_path)
    training = training_record(ckpt_path, OmegaConf.to_container(cfg.training, resolve=True))
    preprocessing = {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if k in PREPROCESSING_KEYS}

    datamodule = FERDataModule(**preprocessing, **OmegaConf.to_container(cfg.data, resolve=True), eval_split="val")
    datamodule.setup("validate")
    public_test = datamodule.splits["val"]
    labels = public_test.labels

    def raw_probs(tta: str) -> torch.Tensor:
        """PublicTest probabilities of the bare network (no biases, temperature 1)."""
        classifier = FaceClassifier(trained.model, trained.image_size, tta=tta)
        with torch.inference_mode():
            return torch.cat([classifier(batch) for batch in public_test.images.split(cfg.data.eval_batch_size)])

    probs = {tta: raw_probs(tta) for tta in ("none", "flip")}
    class_bias = fit_class_bias(probs["none"], labels, cfg.max_accuracy_drop) if cfg.logit_adjustment else None
    calibration = calibrate(adjust_probabilities(probs["none"], class_bias), labels)
    shipped_classifier = FaceClassifier(trained.model, trained.image_size, calibration["temperature"], class_bias)
    variants = {
        f"{'adjusted' if bias else 'plain'}{'_flip' if tta == 'flip' else ''}":
            summary(score(adjust_probabilities(probs[tta], bias), labels))
        for bias in (None, class_bias) for tta in ("none", "flip")
    }
    pytorch = score(adjust_probabilities(probs["none"], class_bias, calibration["temperature"]), labels)

    # everything is made in a folder beside the destination, then moved in: a failure leaves the old model
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ship-") as tmp:
        model_path = Path(tmp) / "emotion_classifier.ckpt"
        save_atomic({
            "state_dict": trained.model.state_dict(),
            "hyper_parameters": checkpoint["hyper_parameters"],
            "datamodule_hyper_parameters": preprocessing,
            "temperature": calibration["temperature"],
            "class_bias": class_bias,
            "pytorch-lightning_version": checkpoint.get("pytorch-lightning_version"),
        }, model_path)
        onnx = (write_onnx(shipped_classifier, model_path, out_dir / model_path.name, cfg, preprocessing,
                           public_test.images, labels, summary(pytorch)) if cfg.onnx.enabled else None)
        card = {
            "model": model_path.name,
            "sha256": file_sha256(model_path),
            "size_bytes": model_path.stat().st_size,
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "classes": list(EMOTIONS),
            "input": f"aligned 48x48 grayscale face (fer.data.align), centre crop {preprocessing.get('image_size', 48)}",
            "source_checkpoint": str(ckpt_path),
            "training": training,
            "preprocessing": preprocessing,
            "public_test": {
                "note": "PublicTest selected the checkpoint and fitted the class biases and temperature: validation "
                        "figures. accuracy/macro_f1/recall: PyTorch with the biases, no test-time augmentation; "
                        "onnx.public_test: the shipped graph(s), which prediction runs by default.",
                "n": pytorch["n"],
                **summary(pytorch),
                "variants": variants,
                "class_bias_two_fold": held_out_bias_gain(probs["none"], labels, cfg.max_accuracy_drop) if class_bias else None,
            },
            "logit_adjustment": {"class_bias": dict(zip(EMOTIONS, class_bias)) if class_bias else None,
                                 "max_accuracy_drop": cfg.max_accuracy_drop},
            "calibration": {**calibration, "note": "ECE of the adjusted probabilities, at temperature 1 (before) and T (after)"},
            "onnx": onnx,
        }
        write_text_atomic(json.dumps(portable(card), indent=2) + "\n", Path(tmp) / "model_card.json")
        for name in ("emotion_classifier.ckpt", "emotion_classifier.onnx", "model_card.json"):
            if (Path(tmp) / name).exists():
                os.replace(Path(tmp) / name, out_dir / name)
    model_path, card_path = out_dir / model_path.name, out_dir / "model_card.json"
    log.info("wrote %s (%.1f MiB) and %s", model_path, card["size_bytes"] / 2**20, card_path)
    for name, v in variants.items():
        print(f"{name:14s} accuracy={v['accuracy']:.4f} macro_f1={v['macro_f1']:.4f} "
              + " ".join(f"{c}={r:.3f}" for c, r in v["recall"].items()))
    print(f"temperature={calibration['temperature']:.3f} ece {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}"
          + (f"; onnx {onnx['precision']}: " + ", ".join(f"{k} accuracy={v['accuracy']:.4f} macro_f1={v['macro_f1']:.4f}"
                                                        for k, v in onnx["public_test"].items()) if onnx else ""))
    return card
