"""The GAN stage: train the class-conditional DCGAN on FER-2013 Training, then measure its samples
against a classifier trained on real data only (FID/KID per class, agreement rate)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer import FERError
from fer.checkpoints import resume_path
from fer.data.augment import to_float
from fer.models.classifier import load_classifier
from fer.models.gan import ConditionalGAN
from fer.reports.figures import save
from fer.reports.gan_quality import ClassifierFeatures, quality_report
from fer.training.callbacks import sample_grid_figure
from fer.training.train import build_trainer

log = logging.getLogger(__name__)


def train_gan(cfg: DictConfig) -> dict:
    """Fit the GAN of `cfg.model` on `cfg.data`'s Training split (resuming from `cfg.ckpt_path`),
    write `samples.png` and, with `cfg.quality.classifier_ckpt`, `quality.json`. Returns the last
    checkpoint's path and the quality report (None without a classifier)."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _recursive_=False)
    trainer = build_trainer(cfg)
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    ckpt_path = resume_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name / "runs", overrides)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    out = Path(cfg.paths.output_dir)
    ckpt = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    log.info("GAN checkpoint: %s", ckpt or "(none saved)")
    if not (out / "samples.png").is_file():  # no SampleGrid callback, or a resumed run that had nothing left to train
        save(sample_grid_figure(model, title=f"after {trainer.current_epoch} epochs: one row per class, fixed latents")[0],
             out / "samples.png")

    quality = None
    if cfg.quality.get("classifier_ckpt"):
        quality = measure_quality(model, datamodule.splits["train"], cfg.quality, seed=cfg.seed)
        (out / "quality.json").write_text(json.dumps(quality, indent=2))
        scalars = {f"quality/{name}/{key}": value for name, scores in quality["per_class"].items()
                   for key, value in scores.items() if isinstance(value, float)}
        scalars.update({f"quality/{k}": v for k, v in quality.items() if k.startswith("mean_")})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.current_epoch)
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True),
                                   {f"hp/{k}": v for k, v in quality.items() if k.startswith("mean_")})
            logger.save()
        log.info("wrote quality.json (mean FID %.2f, mean agreement %.3f) to %s",
                 quality["mean_fid"], quality["mean_agreement"], out)
    else:
        log.info("quality.classifier_ckpt is not set: FID/KID/agreement skipped")
    return {"ckpt_path": ckpt, "quality": quality}


def measure_quality(model: ConditionalGAN, train_split, quality_cfg: DictConfig, seed: int = 0) -> dict:
    """FID/KID/agreement per class of `model`'s samples against `train_split` (the real Training
    images), on the penultimate features of the classifier at `quality_cfg.classifier_ckpt`."""
    classifier, checkpoint = load_classifier(quality_cfg.classifier_ckpt)
    image_size = checkpoint.get("datamodule_hyper_parameters", {}).get("image_size", 48)
    features = ClassifierFeatures(classifier.cpu(), image_size=image_size)
    model = model.cpu().eval()
    n = int(quality_cfg.n_per_class)
    if n < 2:
        raise FERError(f"quality.n_per_class must be at least 2, got {n}")

    def sample(label: int, count: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1000 + label)
        chunks = []
        for start in range(0, count, 256):
            z = torch.randn(min(256, count - start), model.latent_dim, generator=generator)
            chunks.append(model.sample(z, torch.full((len(z),), label)))
        return torch.cat(chunks)

    report = quality_report(to_float(train_split.images), train_split.labels, sample, features, n_per_class=n, seed=seed,
                            kid_subsets=int(quality_cfg.kid_subsets), kid_subset_size=int(quality_cfg.kid_subset_size))
    report["classifier_ckpt"] = str(quality_cfg.classifier_ckpt)
    report["features"] = f"penultimate layer ({features.num_features} values) of the real-data classifier, central {image_size}x{image_size} crop"
    return report
