"""Ship a GAN run's EMA generator as the package's default generator (`fer/assets/gan_generator.ckpt`)
with a card (`gan_card.json`: command, steps, wall time, per-class quality), so that
`python scripts/generate.py` works on a fresh install without training or naming a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fer import EMOTIONS, FERError
from fer.checkpoints import file_sha256, read_checkpoint
from fer.data.fer2013 import save_atomic, write_text_atomic
from fer.models.gan import load_generator
from fer.training.ship import portable, training_record

log = logging.getLogger(__name__)

GENERATOR_FILE, CARD_FILE = "gan_generator.ckpt", "gan_card.json"
CARD_QUALITY_KEYS = ("agreement", "real_recall", "agreement_vs_recall", "fid", "fid_real_halves", "kid_mean",
                     "diversity", "real_diversity")


def ship_generator(cfg: DictConfig) -> dict:
    """Write `cfg.out_dir`/gan_generator.ckpt (the sampling generator of `cfg.ckpt_path`, a train_gan
    checkpoint) and gan_card.json, from the run's `quality.json`; both appear together or not at all."""
    ckpt_path = Path(cfg.ckpt_path)
    checkpoint = read_checkpoint(ckpt_path, {"generator", "discriminator"}, "GAN training run (scripts/train_gan.py)")
    quality_path = ckpt_path.parent.parent / "quality.json"
    if not quality_path.is_file():
        raise FERError(f"{quality_path} is missing: ship a run of scripts/train_gan.py that measured its quality "
                       "(quality.classifier_ckpt set), so the card can say how good the generator is")
    quality = json.loads(quality_path.read_text())
    generator = load_generator(ckpt_path).net
    hparams = checkpoint["hyper_parameters"]

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ship-gan-") as tmp:
        model_path = Path(tmp) / GENERATOR_FILE
        save_atomic({"hyper_parameters": {"generator": hparams["generator"]}, "state_dict": generator.state_dict()}, model_path)
        card = {
            "model": GENERATOR_FILE,
            "sha256": file_sha256(model_path),
            "size_bytes": model_path.stat().st_size,
            "parameters": sum(p.numel() for p in generator.parameters()),
            "classes": list(EMOTIONS),
            "output": "48x48 grayscale faces in [0, 1], aligned as fer.data.align aligns real faces",
            "weights": "the EMA copy of G" if hparams.get("ema_decay") else "the raw G (the run had no EMA)",
            "source_checkpoint": str(ckpt_path),
            "training": {**training_record(ckpt_path, OmegaConf.to_container(cfg.training, resolve=True),
                                           script="scripts/train_gan.py"),
                         "epochs": checkpoint.get("epoch", -1) + 1,
                         "generator_steps": checkpoint.get("global_step", 0) // 2},  # global_step counts G's and D's steps
            "quality": {
                "classifier": quality.get("classifier_ckpt"),
                "features": quality.get("features"),
                "note": "agreement: share of generated class-c faces the real-data classifier labels c; real_recall: its "
                        "recall on real PublicTest class c; FID/KID against real Training faces of the class "
                        "(fid_real_halves: two real halves, the floor); diversity: mean pairwise feature distance",
                "per_class": {name: {key: scores.get(key) for key in CARD_QUALITY_KEYS}
                              for name, scores in quality["per_class"].items()},
                **{key: value for key, value in quality.items() if key.startswith(("mean_", "min_"))},
            },
        }
        write_text_atomic(json.dumps(portable(card), indent=2) + "\n", Path(tmp) / CARD_FILE)
        for name in (GENERATOR_FILE, CARD_FILE):
            os.replace(Path(tmp) / name, out_dir / name)
    log.info("wrote %s (%.1f MiB) and %s", out_dir / GENERATOR_FILE, card["size_bytes"] / 2**20, out_dir / CARD_FILE)
    for name, scores in card["quality"]["per_class"].items():
        print(f"{name:9s} agreement={scores['agreement']:.3f} (real recall {scores['real_recall'] or 0:.3f}) "
              f"fid={scores['fid']:.2f} diversity={scores['diversity']:.2f} (real {scores['real_diversity']:.2f})")
    return card
