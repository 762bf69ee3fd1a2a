"""An ablation (or ladder) as a markdown table:
    python scripts/ablation_table.py logs/pipeline/multiruns/<time> [MORE_SWEEP_DIRS] [--split val|test] [--out table.md]
    python scripts/ablation_table.py logs/train/multiruns/<time> ... [--baseline "experiment=fast10"]
reads each job's metrics.json (scripts/pipeline.py runs: one row per balance arm; scripts/train.py runs: one row per
recipe, i.e. its overrides less seed and paths, and one for its prior-corrected checkpoint); cells are mean ± std over
seeds, with training PFLOP and wall time, and each arm's difference from the baseline arm paired by seed."""

import argparse
import sys
from pathlib import Path

from fer import FERError
from fer.reports.ablation import markdown_table, read_runs

SPLIT_NAMES = {"val": "PublicTest", "test": "PrivateTest"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", nargs="+", help="the folder(s) of `-m` sweeps (or of several run folders)")
    parser.add_argument("--split", choices=sorted(SPLIT_NAMES), default="val")
    parser.add_argument("--baseline", help="the arm that the others are compared with, paired by seed "
                                           "(default: the data.balance=none arm, where there is one)")
    parser.add_argument("--out", help="also write the table here (default: <first sweep_dir>/ablation_<split>.md)")
    args = parser.parse_args()
    try:
        runs = read_runs(*args.sweep_dirs, split=args.split)
        if args.baseline is not None and args.baseline not in runs:
            raise FERError(f"--baseline {args.baseline!r} is not an arm of these runs: {sorted(runs)}")
        table = markdown_table(runs, SPLIT_NAMES[args.split], args.baseline or "none")
    except FERError as error:
        sys.exit(f"error: {error}")
    out = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / f"ablation_{args.split}.md"
    out.write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
