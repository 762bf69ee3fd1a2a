"""The ship stage: turn a trained checkpoint into the package's default model and its model card.

The route every shipped model takes: score the checkpoint on PublicTest through the same
`FaceClassifier` that prediction uses; choose there its views (flip TTA where it raises accuracy),
its class biases (the prior correction -tau * log(Training prior) with one fitted tau, or seven
free biases where they beat it two-fold; the criterion maximised at most `max_accuracy_drop` of
accuracy away) and a temperature (PublicTest is the selection split; PrivateTest stays untouched);
write a small weights-only checkpoint that carries them, its ONNX graphs with all of them inside
(fp32, and int8 where that keeps PublicTest accuracy and runs faster), and a JSON model card with the training command,
config, commit, metrics and calibration error.
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
from fer.data.datamodule import FERDataModule, preprocessing_of
from fer.data.fer2013 import load_split, save_atomic, write_text_atomic
from fer.models.deploy import FaceClassifier, adjust_probabilities, load_face_classifier, onnx_session, prior_correction, rate
from fer.training.evaluate import score
from fer.training.export import calibration_name, export_onnx, graph_metadata, quantize_int8, real_faces

log = logging.getLogger(__name__)


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


CRITERIA = {
    "macro_f1": lambda predicted, labels: float(multiclass_f1_score(predicted, labels, len(EMOTIONS), average="macro")),
    "balanced_accuracy": lambda predicted, labels: float(multiclass_accuracy(predicted, labels, len(EMOTIONS), average="macro")),
}
"""What the class biases may maximise on PublicTest (balanced accuracy: the mean recall)."""


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float(multiclass_accuracy(predicted, labels, len(EMOTIONS), average="micro"))


def fit_class_bias(probs: torch.Tensor, labels: torch.Tensor, max_accuracy_drop: float = 0.005,
                   criterion: str = "macro_f1", grid: torch.Tensor | None = None, rounds: int = 3) -> list[float]:
    """Seven free biases b for argmax(log p + b) that maximise `criterion` while accuracy stays within
    `max_accuracy_drop` of the unadjusted one: coordinate ascent, one class at a time over `grid`."""
    grid = torch.arange(-3, 3.001, 0.05) if grid is None else grid
    log_probs, k, measure = probs.clamp_min(1e-12).log(), probs.shape[1], CRITERIA[criterion]
    bias = torch.zeros(k)
    best = measure(log_probs.argmax(1), labels)
    floor = _accuracy(log_probs.argmax(1), labels) - max_accuracy_drop
    for _ in range(rounds):
        improved = False
        for c in range(k):
            for value in grid:
                candidate = bias.clone()
                candidate[c] = value
                predicted = (log_probs + candidate).argmax(1)
                if _accuracy(predicted, labels) >= floor and (gain := measure(predicted, labels)) > best + 1e-6:
                    bias, best, improved = candidate, gain, True
        if not improved:
            break
    return [round(float(b), 4) for b in bias - bias.mean()]


def fit_prior_tau(probs: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, max_accuracy_drop: float = 0.005,
                  criterion: str = "macro_f1", grid: torch.Tensor | None = None) -> float:
    """The tau of the prior correction log p - tau * log(prior) that maximises `criterion` while
    accuracy stays within `max_accuracy_drop` of tau = 0 (the smallest such tau on a tie)."""
    grid = torch.arange(0, 2.001, 0.05) if grid is None else grid
    log_probs, measure = probs.clamp_min(1e-12).log(), CRITERIA[criterion]
    floor = _accuracy(log_probs.argmax(1), labels) - max_accuracy_drop
    best_tau, best = 0.0, measure(log_probs.argmax(1), labels)
    for tau in grid.tolist():
        predicted = (log_probs + torch.tensor(prior_correction(tau, prior))).argmax(1)
        if _accuracy(predicted, labels) >= floor and (gain := measure(predicted, labels)) > best + 1e-6:
            best_tau, best = round(tau, 4), gain
    return best_tau


def fit_adjustment(method: str, probs: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor,
                   criterion: str, max_accuracy_drop: float) -> tuple[list[float] | None, float | None]:
    """The class biases of `method` (prior: one tau; bias: seven free ones; none) and prior's tau."""
    if method == "prior":
        tau = fit_prior_tau(probs, labels, prior, max_accuracy_drop, criterion)
        return prior_correction(tau, prior), tau
    if method == "bias":
        return fit_class_bias(probs, labels, max_accuracy_drop, criterion), None
    return None, None


def summary(metrics: dict) -> dict:
    return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
            "balanced_accuracy": round(sum(m["recall"] for m in metrics["per_class"].values()) / len(EMOTIONS), 4),
            "recall": {name: round(m["recall"], 4) for name, m in metrics["per_class"].items()}}


def two_fold(method: str, probs: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, criterion: str,
             max_accuracy_drop: float, seed: int = 0) -> dict:
    """What an adjustment does to faces it was not fitted on: fit on one half of PublicTest, measure
    on the other, both ways; the mean accuracy, macro-F1 and balanced accuracy before and after."""
    halves = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).chunk(2)
    before, after, fitted = [], [], []
    for fit_on, measure_on in (halves, halves[::-1]):
        bias, tau = fit_adjustment(method, probs[fit_on], labels[fit_on], prior, criterion, max_accuracy_drop)
        before.append(summary(score(probs[measure_on], labels[measure_on])))
        after.append(summary(score(adjust_probabilities(probs[measure_on], bias), labels[measure_on])))
        fitted.append(tau)
    mean = lambda runs, key: round(sum(r[key] for r in runs) / 2, 4)  # noqa: E731
    figures = {f"{key}_{when}": mean(runs, key) for when, runs in (("before", before), ("after", after))
               for key in ("accuracy", "macro_f1", "balanced_accuracy")}
    return {**figures, "tau_per_half": fitted} if method == "prior" else figures


def choose_adjustment(held_out: dict[str, dict], criterion: str, max_accuracy_drop: float) -> str:
    """The method whose two-fold `criterion` is highest among those whose two-fold accuracy stays
    within `max_accuracy_drop` (the free biases can overfit that bound on half of PublicTest); the
    prior correction, with one parameter, on a tie or when nothing else holds."""
    kept = [m for m, f in held_out.items() if f["accuracy_after"] >= f["accuracy_before"] - max_accuracy_drop - 1e-9]
    return max(kept or ["prior"], key=lambda m: (held_out[m][f"{criterion}_after"], m == "prior"))


def training_prior(cfg: DictConfig) -> torch.Tensor:
    """The class frequencies of FER-2013 Training, which the prior correction divides out."""
    counts = load_split(cfg.data.root, "train", cfg.data.cache_dir).class_counts().double()
    return counts / counts.sum()


def write_onnx(classifier: FaceClassifier, model_path: Path, source: Path, cfg: DictConfig, preprocessing: dict,
               public_test_faces: torch.Tensor, labels: torch.Tensor, reference: dict) -> dict:
    """Beside `model_path`: its fp32 ONNX graph (.onnx) and, where `choose_precision` picks one of the
    int8 candidates (one per count in `onnx.float_leading_convs` and calibration percentile in
    `onnx.calibration_percentiles`), that int8 graph (.int8.onnx), which
    prediction then runs. The graphs say they were made from the checkpoint at `model_path`, to be
    installed as `source`. Returns their card entry with every graph's figures."""
    faces = public_test_faces.numpy()
    fp32 = export_onnx(classifier, model_path.with_suffix(".onnx"), graph_metadata(classifier, model_path, source))
    calibration = real_faces(cfg.data.root, cfg.data.cache_dir, "train", cfg.onnx.calibration_size, preprocessing)
    candidates = {candidate_name(leading, percentile): (leading, percentile)
                  for leading in dict.fromkeys(cfg.onnx.float_leading_convs)
                  for percentile in dict.fromkeys(cfg.onnx.calibration_percentiles)}
    graphs = {"fp32": fp32} | {
        name: quantize_int8(fp32, model_path.with_suffix(f".int8-{i}.onnx"), calibration, percentile, leading,
                            cfg.onnx.float_last_dense)
        for i, (name, (leading, percentile)) in enumerate(candidates.items())}
    batch = faces[:SPEED_BATCH]
    figures = {}
    for name, path in graphs.items():
        session = onnx_session(path)
        figures[name] = summary(score(torch.from_numpy(session.run(None, {"faces": faces})[0]), labels))
        if cfg.onnx.min_int8_speedup is not None:
            figures[name]["faces_per_second"] = round(rate(lambda: session.run(None, {"faces": batch}), len(batch), seconds=1.0))
    chosen, reason = choose_precision(figures, reference, cfg.onnx.max_int8_accuracy_drop, cfg.onnx.min_int8_speedup)
    log.info("ONNX graph: %s (%s)", "fp32" if chosen == "fp32" else f"int8, {chosen}", reason)
    int8 = model_path.with_suffix(".int8.onnx")
    int8.unlink(missing_ok=True)
    for name, path in graphs.items():
        if name == chosen and name != "fp32":
            path.rename(int8)
        elif name != "fp32":
            path.unlink()
    files = [path for path in (fp32, int8) if path.exists()]
    leading, percentile = candidates.get(chosen, (None, None))
    return {"files": [path.name for path in files], "precision": "fp32" if chosen == "fp32" else "int8",
            "float_leading_convs": leading, "calibration_percentile": percentile, "reason": reason,
            "size_bytes": {path.name: path.stat().st_size for path in files}, "tta": classifier.tta,
            "speed_batch": None if cfg.onnx.min_int8_speedup is None else len(batch),
            "public_test": {"fp32": figures.pop("fp32"), **({"int8": figures[chosen]} if chosen != "fp32" else {})},
            "int8_candidates": figures}


def candidate_name(float_leading_convs: int, percentile: float | None) -> str:
    """How the card and the log name an int8 candidate, e.g. "1 leading convs in float, percentile 99.9"."""
    return f"{float_leading_convs} leading convs in float, {calibration_name(percentile)}"


SPEED_BATCH = 256  # the batch at which the ship stage times each graph: bench_predict's throughput batch


def choose_precision(figures: dict, reference: dict, max_accuracy_drop: float, min_speedup: float | None) -> tuple:
    """The graph prediction runs: among the int8 candidates (every key of `figures` but "fp32") whose
    PublicTest accuracy and macro-F1 are within `max_accuracy_drop` of PyTorch's (`reference`), the one
    with the most faces/s, if it runs at least `min_speedup` x the fp32 graph (on a small net the
    quantise-dequantise pairs can cost more than the int8 arithmetic saves); with `min_speedup` None
    (untimed), the most accurate. Else "fp32". Returns the choice and why."""
    candidates = [name for name in figures if name != "fp32"]
    lost = {name: [key for key in ("accuracy", "macro_f1") if figures[name][key] < reference[key] - max_accuracy_drop]
            for name in candidates}
    kept = [name for name in candidates if not lost[name]]
    if not kept:
        losses = "; ".join(f"{name}: {' and '.join(keys)}" for name, keys in lost.items())
        return "fp32", f"every int8 graph loses more than {max_accuracy_drop} of PublicTest ({losses})"
    if min_speedup is None:
        best = max(kept, key=lambda name: figures[name]["accuracy"])
        return best, f"int8 keeps PublicTest accuracy and macro-F1 within {max_accuracy_drop}"
    best = max(kept, key=lambda name: figures[name]["faces_per_second"])
    speedup = figures[best]["faces_per_second"] / figures["fp32"]["faces_per_second"]
    if speedup < min_speedup:
        return "fp32", f"int8 keeps accuracy but runs at best {speedup:.2f}x the fp32 graph's faces/s (< {min_speedup})"
    return best, f"int8 keeps accuracy within {max_accuracy_drop} and runs {speedup:.2f}x the fp32 graph's faces/s"


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
    run folder of `script`) plus what the run folder cannot know (`training.*`: commit, machine, wall time).
    A checkpoint of a pipeline's stage (`<run>/classifier/checkpoints/`, `<run>/gan/checkpoints/`) is
    recorded as the pipeline's command, with that stage's config."""
    stage_dir = ckpt_path.parent.parent
    hydra_dir, stage = stage_dir / ".hydra", None
    if not (hydra_dir / "config.yaml").is_file() and (stage_dir.parent / ".hydra" / "config.yaml").is_file():
        hydra_dir, stage, script = stage_dir.parent / ".hydra", stage_dir.name, "scripts/pipeline.py"
    if not (hydra_dir / "config.yaml").is_file():
        raise FERError(f"{ckpt_path} is not inside a Hydra run folder ({hydra_dir} is missing): "
                       "its training command and config cannot be recorded")
    overrides = OmegaConf.to_container(OmegaConf.load(hydra_dir / "overrides.yaml"))
    config = OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"))
    if stage is not None:
        if stage not in config:
            raise FERError(f"{ckpt_path}: the pipeline run {stage_dir.parent} has no stage {stage!r} in its config")
        stage_config = config[stage]
        # the stage's data folders interpolate the pipeline's `data` (root, cache_dir): record those values
        stage_config["data"] = {**(stage_config.get("data") or {}), **(config.get("data") or {})}
        config = {**stage_config, "seed": config.get("seed")}
    return {
        "command": " ".join([f"python {script}", *overrides]),
        **training,
        "config": {key: config.get(key) for key in ("seed", "data", "model", "trainer")},
    }


def shipped_card(ckpt_path: Path) -> dict | None:
    """The model card beside a shipped checkpoint, where it describes exactly that file: re-shipping
    (new views, biases or graph for the same weights) keeps how the weights were trained."""
    card_path = ckpt_path.parent / "model_card.json"
    if not card_path.is_file():
        return None
    card = json.loads(card_path.read_text())
    return card if card.get("sha256") == file_sha256(ckpt_path) else None


def ship_model(cfg: DictConfig) -> dict:
    """Write `cfg.out_dir`/emotion_classifier.ckpt (+ .onnx) and model_card.json from `cfg.ckpt_path`
    (a training run's checkpoint, or a shipped one with its card)."""
    ckpt_path = Path(cfg.ckpt_path)
    trained, checkpoint = load_face_classifier(ckpt_path)
    previous = shipped_card(ckpt_path)
    training = (previous["training"] if previous else
                training_record(ckpt_path, OmegaConf.to_container(cfg.training, resolve=True)))
    preprocessing = preprocessing_of(checkpoint)

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
    plain = {tta: summary(score(p, labels)) for tta, p in probs.items()}
    tta = (max(("none", "flip"), key=lambda t: plain[t]["accuracy"]) if cfg.tta == "auto" else cfg.tta)

    # the class biases: tau of the prior correction, or seven free biases where those hold up two-fold
    adjust = cfg.adjustment
    prior = training_prior(cfg)
    methods = ["prior", "bias"] if adjust.method == "auto" else [] if adjust.method == "none" else [adjust.method]
    held_out = {m: two_fold(m, probs[tta], labels, prior, adjust.criterion, adjust.max_accuracy_drop) for m in methods}
    method = choose_adjustment(held_out, adjust.criterion, adjust.max_accuracy_drop) if methods else "none"
    class_bias, tau = fit_adjustment(method, probs[tta], labels, prior, adjust.criterion, adjust.max_accuracy_drop)

    calibration = calibrate(adjust_probabilities(probs[tta], class_bias), labels)
    shipped_classifier = FaceClassifier(trained.model, trained.image_size, calibration["temperature"], class_bias, tta)
    variants = {
        f"{'adjusted' if bias else 'plain'}{'_flip' if view == 'flip' else ''}":
            summary(score(adjust_probabilities(probs[view], bias), labels))
        for bias in (None, class_bias) for view in ("none", "flip")
    }
    pytorch = score(adjust_probabilities(probs[tta], class_bias, calibration["temperature"]), labels)

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
            "tta": tta,
            "adjustment": {"method": method, "tau": tau, "criterion": adjust.criterion},
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
            "source_checkpoint": previous["source_checkpoint"] if previous else str(ckpt_path),
            "training": training,
            "preprocessing": preprocessing,
            "public_test": {
                "note": "PublicTest selected the checkpoint and fitted tau (or the class biases) and the temperature: "
                        "validation figures. accuracy/macro_f1/recall: PyTorch, the default views (tta) and biases; "
                        "onnx.public_test: the shipped graph(s), which prediction runs by default.",
                "n": pytorch["n"],
                "tta": tta,
                **summary(pytorch),
                "variants": variants,
            },
            "adjustment": {"method": method, "tau": tau, "criterion": adjust.criterion,
                           "max_accuracy_drop": adjust.max_accuracy_drop,
                           "class_bias": dict(zip(EMOTIONS, class_bias)) if class_bias else None,
                           "training_prior": dict(zip(EMOTIONS, [round(float(q), 4) for q in prior])),
                           "two_fold": held_out,
                           "note": "two_fold: fitted on one half of PublicTest, measured on the other, both ways; "
                                   "auto keeps the seven free biases only where they beat tau there"},
            "calibration": {**calibration, "note": "ECE of the adjusted probabilities, at temperature 1 (before) and T (after)"},
            "onnx": onnx,
        }
        write_text_atomic(json.dumps(portable(card), indent=2) + "\n", Path(tmp) / "model_card.json")
        for name in ("emotion_classifier.ckpt", "emotion_classifier.onnx", "emotion_classifier.int8.onnx", "model_card.json"):
            if (Path(tmp) / name).exists():
                os.replace(Path(tmp) / name, out_dir / name)
            elif name.endswith(".onnx"):  # a graph of the model this one replaces
                (out_dir / name).unlink(missing_ok=True)
    model_path, card_path = out_dir / model_path.name, out_dir / "model_card.json"
    log.info("wrote %s (%.1f MiB) and %s", model_path, card["size_bytes"] / 2**20, card_path)
    for name, v in variants.items():
        print(f"{name:14s} accuracy={v['accuracy']:.4f} macro_f1={v['macro_f1']:.4f} "
              + " ".join(f"{c}={r:.3f}" for c, r in v["recall"].items()))
    print(f"tta={tta} adjustment={method}" + (f" tau={tau}" if tau is not None else "")
          + "".join(f"; two-fold {m}: {adjust.criterion} {f[adjust.criterion + '_before']:.4f} -> {f[adjust.criterion + '_after']:.4f}"
                    f" accuracy {f['accuracy_before']:.4f} -> {f['accuracy_after']:.4f}" for m, f in held_out.items()))
    print(f"temperature={calibration['temperature']:.3f} ece {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}"
          + (f"; onnx {onnx['precision']}: " + ", ".join(f"{k} accuracy={v['accuracy']:.4f} macro_f1={v['macro_f1']:.4f}"
                                                        for k, v in onnx["public_test"].items()) if onnx else ""))
    for name, v in (onnx or {}).get("int8_candidates", {}).items():
        print(f"int8 candidate, {name}: accuracy={v['accuracy']:.4f} macro_f1={v['macro_f1']:.4f}"
              + (f" faces/s={v['faces_per_second']:,}" if "faces_per_second" in v else ""))
    return card
