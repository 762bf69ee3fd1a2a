"""The generation stage: synthetic 48x48 grayscale faces per class from a GAN checkpoint, written as
`<output>/synthetic/<class>/*.png` with a `manifest.csv` (file, class, seed, generator hash).

Writes are atomic (a temporary name, then a hard link that refuses to replace anything), an
existing `synthetic/` folder is never written into, and nothing goes inside the dataset folder.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import statistics
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from fer import EMOTIONS, FERError
from fer.checkpoints import file_sha256
from fer.data.fer2013 import load_split
from fer.models.gan import FaceGenerator, load_generator

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("file", "class", "seed", "generator_sha256")
TARGETS = {"largest": max, "median": statistics.median_low}
"""What generate.target_share is a share of: the largest or the median class's real Training count."""


def load_gan(path: str | Path) -> tuple[FaceGenerator, str]:
    """The sampling generator of a GAN checkpoint or of the shipped generator, and the file's SHA-256."""
    try:
        return load_generator(path), file_sha256(path)
    except FERError as error:
        raise FERError(f"gan_ckpt: {error}") from error


def plan_counts(n_per_class: int | Mapping[str, int] | None, target_share: float | None,
                real_counts: list[int] | None = None, target_of: str = "largest") -> list[int]:
    """Images to generate per class: a fixed number (one for all, or per class name), or enough to
    lift each class to `target_share` of the `target_of` ("largest" or "median") class's real count."""
    if (n_per_class is None) == (target_share is None):
        raise FERError("generate: set exactly one of generate.n_per_class (a number, or one per class) "
                       f"and generate.target_share (a share of the largest or median class), got {n_per_class!r} and {target_share!r}")
    if n_per_class is not None:
        if isinstance(n_per_class, Mapping):
            unknown = set(n_per_class) - set(EMOTIONS)
            if unknown:
                raise FERError(f"generate.n_per_class: unknown classes {sorted(unknown)}, expected names from {list(EMOTIONS)}")
            counts = [n_per_class.get(name, 0) for name in EMOTIONS]
        else:
            counts = [n_per_class] * len(EMOTIONS)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise FERError(f"generate.n_per_class: counts must be integers >= 0, got {n_per_class!r}")
        return counts
    if isinstance(target_share, bool) or not isinstance(target_share, (int, float)) or not 0 < target_share <= 1:
        raise FERError(f"generate.target_share must be a number in (0, 1], got {target_share!r}")
    if target_of not in TARGETS:
        raise FERError(f"generate.target_of must be one of {list(TARGETS)}, got {target_of!r}")
    if real_counts is None:
        raise FERError("generate.target_share needs the real Training counts")
    target = math.ceil(target_share * TARGETS[target_of](real_counts))
    return [max(0, target - count) for count in real_counts]


def image_seed(seed: int, label: int, index: int) -> int:
    """The seed of one image's latent vector: unique per (run seed, class, attempt)."""
    return (seed * len(EMOTIONS) + label) * 10_000_000 + index


def latents(seeds: list[int], latent_dim: int) -> torch.Tensor:
    return torch.stack([torch.randn(latent_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def write_png(image: np.ndarray, path: Path) -> None:
    """Write atomically and never over an existing file: a temporary name, then a hard link."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    _write_new(buffer.getvalue(), path)


def _write_new(data: bytes, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
    except FileExistsError as error:
        raise FERError(f"{path} exists already: generated images are never overwritten") from error
    finally:
        tmp.unlink()


def generate(cfg: DictConfig) -> dict:
    """Generate per `cfg.generate` from `cfg.gan_ckpt` into `cfg.paths.output_dir`/synthetic.

    Returns a report: per class how many were wanted, generated and kept (after the optional
    confidence filter), the folder, manifest and total."""
    gen = cfg.generate
    out = Path(cfg.paths.output_dir).expanduser().resolve() / "synthetic"
    root = Path(str(cfg.data.root)).expanduser().resolve()
    if out.is_relative_to(root):
        raise FERError(f"the output folder {out} is inside the dataset folder {root} (data.root): nothing is written there")
    if out.exists() and any(out.iterdir()):
        raise FERError(f"{out} already holds generated images: a run never writes into an earlier run's folder")

    n_per_class = OmegaConf.to_container(gen.n_per_class) if isinstance(gen.n_per_class, DictConfig) else gen.n_per_class
    real_counts = None
    if gen.get("target_share") is not None and n_per_class is None:
        real_counts = load_split(root, "train", cfg.data.cache_dir).class_counts().tolist()
    wanted = plan_counts(n_per_class, gen.get("target_share"), real_counts, gen.get("target_of", "largest"))

    model, sha = load_gan(cfg.gan_ckpt)
    judge = None
    min_conf = gen.get("filter_min_conf")
    if min_conf is not None:
        if not 0 < min_conf <= 1:
            raise FERError(f"generate.filter_min_conf must be in (0, 1] or null, got {min_conf!r}")
        if not gen.get("classifier_ckpt"):
            raise FERError("generate.filter_min_conf needs generate.classifier_ckpt (a classifier trained on real data)")
        from fer.models.classifier import ClassifierFeatures

        judge = ClassifierFeatures.from_checkpoint(gen.classifier_ckpt)
    batch_size = int(gen.batch_size)
    max_attempts = int(gen.get("max_attempts_factor", 20))

    rows, report = [], {"folder": str(out), "manifest": str(out / "manifest.csv"), "generator_sha256": sha,
                        "gan_ckpt": str(cfg.gan_ckpt), "filter_min_conf": min_conf, "per_class": {}}
    for label, name in enumerate(EMOTIONS):
        (out / name).mkdir(parents=True, exist_ok=True)
        kept = attempts = 0
        limit = wanted[label] * (max_attempts if judge is not None else 1)
        while kept < wanted[label] and attempts < limit:
            count = min(batch_size, limit - attempts) if judge is not None else min(batch_size, wanted[label] - kept)
            seeds = [image_seed(cfg.seed, label, attempts + i) for i in range(count)]
            attempts += count
            images = model.sample(latents(seeds, model.latent_dim), torch.full((count,), label))
            keep = torch.ones(count, dtype=torch.bool)
            if judge is not None:
                probs = judge.predict(images)
                keep = (probs.argmax(1) == label) & (probs[:, label] >= min_conf)
            pixels = (images[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            for i in keep.nonzero().flatten().tolist():
                if kept == wanted[label]:
                    break
                file = f"{name}/{name}_{seeds[i]}.png"
                write_png(pixels[i], out / file)
                rows.append((file, name, seeds[i], sha))
                kept += 1
        report["per_class"][name] = {"wanted": wanted[label], "generated": attempts, "kept": kept}
        if kept < wanted[label]:
            log.warning("generate: %s kept %d of %d wanted after %d samples (filter_min_conf=%s)",
                        name, kept, wanted[label], attempts, min_conf)

    manifest = io.StringIO()
    writer = csv.writer(manifest)
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    _write_new(manifest.getvalue().encode(), out / "manifest.csv")
    report["total"] = len(rows)
    log.info("generate: %d images in %s; per class %s", len(rows), out,
             {name: (c["kept"], c["generated"]) if judge is not None else c["kept"] for name, c in report["per_class"].items()})
    if judge is not None:
        print(f"kept {len(rows)} of {sum(c['generated'] for c in report['per_class'].values())} samples "
              f"(classifier agrees with confidence >= {min_conf})")
    return report
