"""The judging stage: a generator's faces read by several classifiers trained on real faces only.

The shipped classifier, the usual judge, learnt from the same Training faces as the classifier inside
the GAN's feature discriminator (`fer/assets/feature_classifier/`), so its agreement with the
generator's labels is not fully independent evidence. A second judge of another seed and recipe,
never shown to the GAN, says whether the generated faces carry their labels for another reader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from fer import EMOTIONS, FERError
from fer.models.gan import load_generator
from fer.reports.gan_quality import measure_quality

log = logging.getLogger(__name__)


def judge_generator(cfg: DictConfig) -> dict:
    """`cfg.gan_ckpt`'s quality report (agreement, real recall, FID/KID, diversity per class) on the
    features of each classifier in `cfg.judges`; writes judges.json and judges.md (the agreement table)."""
    judges = list(cfg.judges)
    if not judges:
        raise FERError("judges is an empty list: give one classifier checkpoint or more")
    generator = load_generator(cfg.gan_ckpt)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")  # Training (the real faces the distances compare with) and PublicTest (real recall)
    q = cfg.quality
    reports = {str(judge): measure_quality(generator, datamodule.splits["train"], datamodule.splits["val"], judge,
                                           int(q.n_per_class), cfg.seed, int(q.kid_subsets), int(q.kid_subset_size))
               for judge in judges}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "judges.json").write_text(json.dumps({"gan_ckpt": str(cfg.gan_ckpt), "judges": reports}, indent=2))
    table = agreement_table(reports)
    (out / "judges.md").write_text(table)
    log.info("wrote judges.json and judges.md to %s", out)
    print(table, end="")
    return reports


def agreement_table(reports: dict[str, dict]) -> str:
    """Per class and on average: each judge's agreement (the share of generated class-c faces it labels
    c) beside its recall on real PublicTest faces of c, the most a generator's faces could expect."""
    names = [f"judge {i}" for i in range(1, len(reports) + 1)]
    header = ["class", *(f"{name} {what}" for name in names for what in ("agreement", "real recall"))]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for emotion in EMOTIONS:
        cells = [f"{r['per_class'][emotion]['agreement']:.3f} | {r['per_class'][emotion]['real_recall']:.3f}"
                 if emotion in r["per_class"] else "– | –" for r in reports.values()]
        lines.append(f"| {emotion} | " + " | ".join(cells) + " |")
    means = [f"{r['mean_agreement']:.3f} | {r['mean_real_recall']:.3f}" for r in reports.values()]
    lines.append("| mean | " + " | ".join(means) + " |")
    legend = [f"{name}: `{judge}`" for name, judge in zip(names, reports)]
    return "\n".join(lines) + "\n\n" + "; ".join(legend) + "\n"
