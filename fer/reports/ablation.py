"""The ablation table: the `metrics.json` of each pipeline run in a sweep folder -> one markdown row
per arm (the `data.balance` option; for `gan` also the synthetic share and filter), mean +- std over
its runs (seeds)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from fer import FERError

BALANCE_OPTIONS = ("none", "class_weights", "oversample", "logit_adjust", "gan")
"""The table's row order (fer.data.datamodule.BALANCE_OPTIONS; not imported, so the script needs no torch)."""

COLUMNS = (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("disgust recall", "disgust"), ("fear recall", "fear"))


def read_runs(*sweep_dirs: str | Path, split: str = "val") -> dict[str, list[dict[str, float]]]:
    """{arm: [{accuracy, macro_f1, disgust, fear} per run]} from each `sweep_dir`/*/metrics.json
    (several sweep folders: a sweep run in parts)."""
    runs: dict[str, list[dict[str, float]]] = {}
    files = []
    for sweep_dir in sweep_dirs:
        found = sorted(Path(sweep_dir).glob("*/metrics.json"))
        if not found:
            raise FERError(f"no <job>/metrics.json in {sweep_dir}: expected the folder of a scripts/pipeline.py -m sweep")
        files += found
    for file in files:
        summary = json.loads(file.read_text())
        metrics = (summary.get("splits") or {}).get(split)
        if metrics is None:
            continue
        runs.setdefault(summary.get("arm", summary["balance"]), []).append({
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "disgust": metrics["per_class"]["disgust"]["recall"], "fear": metrics["per_class"]["fear"]["recall"],
        })
    if not runs:
        raise FERError(f"no run in {', '.join(map(str, sweep_dirs))} has {split} metrics")
    return runs


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown_table(runs: dict[str, list[dict[str, float]]], split_name: str = "PublicTest") -> str:
    """Rows in the order of `BALANCE_OPTIONS` (gan arms by name); cells are mean ± sample std (n-1) over the runs."""
    header = ["arm (data.balance)", "runs", *(f"{title} ({split_name})" for title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    def order(arm: str) -> tuple[int, str]:
        option = arm.split(" ")[0]
        return (BALANCE_OPTIONS.index(option) if option in BALANCE_OPTIONS else len(BALANCE_OPTIONS), arm)

    for option in sorted(runs, key=order):
        rows = runs[option]
        cells = [_cell([r[key] for r in rows]) for _, key in COLUMNS]
        lines.append(f"| {option} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
