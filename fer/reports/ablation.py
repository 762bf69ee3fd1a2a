"""The ablation table: the `metrics.json` of each run in one or more sweep folders -> one markdown row
per arm, mean +- std over its runs (seeds). Two kinds of run: a pipeline run (scripts/pipeline.py; its arm
is the `data.balance` option and, for `gan`, the synthetic share and filter) and a training run
(scripts/train.py; its arm is its command-line overrides less the seed and the paths)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from fer import FERError

BALANCE_OPTIONS = ("none", "class_weights", "oversample", "logit_adjust", "gan")
"""The table's row order (fer.data.datamodule.BALANCE_OPTIONS; not imported, so the script needs no torch)."""

COLUMNS = (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("balanced accuracy", "balanced_accuracy"),
           ("disgust recall", "disgust"), ("fear recall", "fear"))
FLIP_COLUMNS = (("accuracy, flip TTA", "flip_accuracy"), ("macro-F1, flip TTA", "flip_macro_f1"))
"""A training run's best checkpoint also scored averaging each face and its mirror (shown where runs have it)."""
COST = (("training PFLOP", "pflop", 3), ("training wall (min)", "minutes", 1))
"""The runs' cost: training compute (forward + backward FLOP of every step) and wall time."""

PRIOR_CORRECTED = " + prior correction (tau fitted on PublicTest)"
"""The post-hoc arm of a training run: its checkpoint's one view with -tau * log(Training prior) added."""

NOT_AN_ARM = ("seed=", "paths.", "data.root=", "data.cache_dir=", "hydra.", "trainer.enable_progress_bar=")
"""Overrides of a training run that do not change its recipe."""


def _pipeline_run(summary: dict, split: str) -> list[tuple[str, dict]]:
    metrics = (summary.get("splits") or {}).get(split)
    if metrics is None:
        return []
    seconds = (summary.get("seconds") or {}).get("classifier")
    recall = {name: m["recall"] for name, m in metrics["per_class"].items()}
    return [(summary.get("arm", summary["balance"]), {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "balanced_accuracy": statistics.mean(recall.values()),
        "disgust": recall["disgust"], "fear": recall["fear"],
        "pflop": summary.get("train_pflop"), "minutes": seconds and seconds / 60,
    })]


def _training_run(summary: dict, split: str) -> list[tuple[str, dict]]:
    """The run's row and, where its summary has it, the row of its prior-corrected checkpoint."""
    if split != "val":  # a training run scores PublicTest (val) only
        return []
    val, flip, prior = summary["val"], summary.get("val_flip") or {}, summary.get("val_prior")
    arm = " ".join(o for o in summary.get("overrides", []) if not o.startswith(NOT_AN_ARM)) or "(defaults)"
    cost = {"pflop": summary.get("train_pflop"), "minutes": summary["fit_seconds"] / 60}
    recall = [v for k, v in val.items() if k.startswith("val/recall_")]
    rows = [(arm, {"accuracy": val["val/acc"], "macro_f1": val["val/f1_macro"], "balanced_accuracy": statistics.mean(recall),
                   "disgust": val["val/recall_disgust"], "fear": val["val/recall_fear"],
                   "flip_accuracy": flip.get("accuracy"), "flip_macro_f1": flip.get("macro_f1"), **cost})]
    if prior:
        rows.append((arm + PRIOR_CORRECTED, {"accuracy": prior["accuracy"], "macro_f1": prior["macro_f1"],
                                             "balanced_accuracy": prior["balanced_accuracy"], "disgust": prior["recall"]["disgust"],
                                             "fear": prior["recall"]["fear"], **cost}))
    return rows


def read_runs(*sweep_dirs: str | Path, split: str = "val") -> dict[str, list[dict[str, float]]]:
    """{arm: [{accuracy, macro_f1, disgust, fear, pflop, minutes} per run]} from each `sweep_dir`/*/metrics.json
    (several sweep folders: a sweep run in parts)."""
    runs: dict[str, list[dict[str, float]]] = {}
    files = []
    for sweep_dir in sweep_dirs:
        found = sorted(Path(sweep_dir).glob("*/metrics.json"))
        if not found:
            raise FERError(f"no <job>/metrics.json in {sweep_dir}: expected the folder of a scripts/pipeline.py or "
                           "scripts/train.py sweep (or of several runs)")
        files += found
    for file in files:
        summary = json.loads(file.read_text())
        for arm, row in _training_run(summary, split) if "val" in summary else _pipeline_run(summary, split):
            runs.setdefault(arm, []).append(row)
    if not runs:
        raise FERError(f"no run in {', '.join(map(str, sweep_dirs))} has {split} metrics")
    return runs


def _cell(values: list[float | None], digits: int = 4) -> str:
    if any(v is None for v in values):
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(runs: dict[str, list[dict[str, float]]], split_name: str = "PublicTest") -> str:
    """Rows in the order of `BALANCE_OPTIONS` (other arms by name); cells are mean ± sample std (n-1) over the runs."""
    flipped = any(r.get("flip_accuracy") is not None for rows in runs.values() for r in rows)
    columns = COLUMNS + FLIP_COLUMNS if flipped else COLUMNS
    header = ["arm", "runs", *(f"{title} ({split_name})" for title, _ in columns), *(title for title, _, _ in COST)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def order(arm: str) -> tuple[int, str]:
        option = arm.split(" ")[0]
        return (BALANCE_OPTIONS.index(option) if option in BALANCE_OPTIONS else len(BALANCE_OPTIONS), arm)

    for arm in sorted(runs, key=order):
        rows = runs[arm]
        cells = [_cell([r.get(key) for r in rows]) for _, key in columns] + [_cell([r[key] for r in rows], d) for _, key, d in COST]
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
