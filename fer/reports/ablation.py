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
PAIRED = (("Δ accuracy", "accuracy"), ("Δ macro-F1", "macro_f1"))
"""The columns of differences from the baseline arm, paired by seed."""
COST = (("training PFLOP", "pflop", 3), ("training wall (min)", "minutes", 1))
"""The runs' cost: training compute (the FLOP of every step: forward, backward, optimiser) and wall time."""

PRIOR_CORRECTED = " + prior correction (tau fitted on PublicTest)"
"""The post-hoc arm of a training run: its checkpoint's one view with -tau * log(Training prior) added."""

NOT_AN_ARM = ("seed=", "paths.", "data.root=", "data.cache_dir=", "hydra.", "trainer.enable_progress_bar=")
"""Overrides of a training run that do not change its recipe."""


def _scores(accuracy: float, macro_f1: float, recall: dict[str, float]) -> dict[str, float]:
    """The quality columns of a row, from accuracy, macro-F1 and the per-class recall."""
    return {"accuracy": accuracy, "macro_f1": macro_f1, "balanced_accuracy": statistics.mean(recall.values()),
            "disgust": recall["disgust"], "fear": recall["fear"]}


def _checkpoint_rows(arm: str, row: dict, training: dict | None) -> list[tuple[str, dict]]:
    """The row of a run and, where its training summary (scripts/train.py's metrics.json) has them, its best
    checkpoint's flip-TTA columns and the row of the same checkpoint with the post-hoc prior correction."""
    training = training or {}
    flip, prior = training.get("val_flip") or {}, training.get("val_prior")
    rows = [(arm, {**row, "flip_accuracy": flip.get("accuracy"), "flip_macro_f1": flip.get("macro_f1")})]
    if prior:
        shared = {key: row[key] for key in ("seed", "pflop", "minutes")}
        rows.append((arm + PRIOR_CORRECTED, {**_scores(prior["accuracy"], prior["macro_f1"], prior["recall"]), **shared}))
    return rows


def _pipeline_run(summary: dict, split: str, classifier: dict | None) -> list[tuple[str, dict]]:
    """`classifier`: the summary of the run's classifier stage (its flip and prior-corrected PublicTest)."""
    metrics = (summary.get("splits") or {}).get(split)
    if metrics is None:
        return []
    seconds = (summary.get("seconds") or {}).get("classifier")
    recall = {name: m["recall"] for name, m in metrics["per_class"].items()}
    row = {**_scores(metrics["accuracy"], metrics["macro_f1"], recall), "seed": summary.get("seed"),
           "pflop": summary.get("train_pflop"), "minutes": seconds and seconds / 60}
    return _checkpoint_rows(summary.get("arm", summary["balance"]), row, classifier if split == "val" else None)


def _training_run(summary: dict, split: str) -> list[tuple[str, dict]]:
    if split != "val":  # a training run scores PublicTest (val) only
        return []
    val = summary["val"]
    arm = " ".join(o for o in summary.get("overrides", []) if not o.startswith(NOT_AN_ARM)) or "(defaults)"
    recall = {k.removeprefix("val/recall_"): v for k, v in val.items() if k.startswith("val/recall_")}
    row = {**_scores(val["val/acc"], val["val/f1_macro"], recall), "seed": summary.get("seed"),
           "pflop": summary.get("train_pflop"), "minutes": summary["fit_seconds"] / 60}
    return _checkpoint_rows(arm, row, summary)


def read_runs(*sweep_dirs: str | Path, split: str = "val") -> dict[str, list[dict[str, float]]]:
    """{arm: [{accuracy, macro_f1, balanced_accuracy, disgust, fear, seed, pflop, minutes[, flip_*]} per run]}
    from each `sweep_dir`/*/metrics.json (several sweep folders: a sweep run in parts), and for a pipeline
    run its `classifier/metrics.json` too."""
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
        if "val" in summary:
            rows = _training_run(summary, split)
        else:  # a pipeline run: its classifier stage's summary beside it, where kept
            classifier = file.parent / "classifier" / "metrics.json"
            rows = _pipeline_run(summary, split, json.loads(classifier.read_text()) if classifier.exists() else None)
        for arm, row in rows:
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


def paired_differences(rows: list[dict], baseline: list[dict], key: str) -> list[float]:
    """`key` of each run minus the baseline arm's run of the same seed (runs without a partner left out)."""
    partner = {r["seed"]: r[key] for r in baseline if r.get("seed") is not None}
    if len(partner) < sum(r.get("seed") is not None for r in baseline):
        raise FERError(f"the baseline arm has several runs of one seed (seeds {sorted(r['seed'] for r in baseline)}): "
                       "keep one run per seed")
    return [r[key] - partner[r["seed"]] for r in rows if r.get("seed") in partner]


def _signed(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:+.4f}"
    return f"{statistics.mean(values):+.4f} ± {statistics.stdev(values):.4f}"


def markdown_table(runs: dict[str, list[dict[str, float]]], split_name: str = "PublicTest",
                   baseline: str | None = "none") -> str:
    """Rows in the order of `BALANCE_OPTIONS` (other arms by name); cells are mean ± sample std (n-1) over the
    runs. Where the `baseline` arm is among them, each arm also gets its accuracy and macro-F1 difference from
    it paired by seed (mean ± std of the per-seed differences), which seed-to-seed noise shared by both cancels."""
    flipped = any(r.get("flip_accuracy") is not None for rows in runs.values() for r in rows)
    columns = COLUMNS + FLIP_COLUMNS if flipped else COLUMNS
    paired = PAIRED if baseline in runs else ()
    header = ["arm", "runs", *(f"{title} ({split_name})" for title, _ in columns),
              *(f"{title} vs {baseline}, paired by seed" for title, _ in paired), *(title for title, _, _ in COST)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def order(arm: str) -> tuple[int, str]:
        option = arm.split(" ")[0]
        return (BALANCE_OPTIONS.index(option) if option in BALANCE_OPTIONS else len(BALANCE_OPTIONS), arm)

    for arm in sorted(runs, key=order):
        rows = runs[arm]
        cells = ([_cell([r.get(key) for r in rows]) for _, key in columns]
                 + ["–" if arm == baseline else _signed(paired_differences(rows, runs[baseline], key)) for _, key in paired]
                 + [_cell([r[key] for r in rows], d) for _, key, d in COST])
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
