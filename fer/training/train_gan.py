"""The GAN stage: train the class-conditional DCGAN on FER-2013 Training, then measure its samples
against a classifier trained on real data only (FID/KID per class, agreement rate)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer.checkpoints import resume_path
from fer.reports.figures import save
from fer.reports.gan_quality import measure_quality, quality_scalars
from fer.training.callbacks import sample_grid_figure
from fer.training.train import RESUMED_IN_A_NEW_FOLDER, build_trainer, by_design

log = logging.getLogger(__name__)

NO_VALIDATION_LOOP = r"You passed in a `val_dataloader` but have no `validation_step`"
"""The datamodule holds PublicTest for the quality measure; the GAN has no validation loop."""
FROZEN_FEATURES = r"Found \d+ module\(s\) in eval mode at the start of training"
"""The feature discriminator's classifier is frozen, in eval mode."""


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
    with by_design(RESUMED_IN_A_NEW_FOLDER, NO_VALIDATION_LOOP, FROZEN_FEATURES):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    out = Path(cfg.paths.output_dir)
    ckpt = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    log.info("GAN checkpoint: %s", ckpt or "(none saved)")
    if not (out / "samples.png").is_file():  # no SampleGrid callback, or a resumed run that had nothing left to train
        save(sample_grid_figure(model, title=f"after {trainer.current_epoch} epochs: one row per class, fixed latents")[0],
             out / "samples.png")

    quality = None
    if cfg.quality.get("classifier_ckpt"):
        q = cfg.quality
        quality = measure_quality(model.cpu().eval(), datamodule.splits["train"], datamodule.splits.get("val"),
                                  q.classifier_ckpt, int(q.n_per_class), cfg.seed, int(q.kid_subsets), int(q.kid_subset_size))
        (out / "quality.json").write_text(json.dumps(quality, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics(quality_scalars(quality), step=trainer.global_step)
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True),
                                   {f"hp/{k}": v for k, v in quality.items() if k.startswith(("mean_", "min_"))})
            logger.save()
        log.info("wrote quality.json (mean FID %.2f, mean agreement %.3f) to %s",
                 quality["mean_fid"], quality["mean_agreement"], out)
    else:
        log.info("quality.classifier_ckpt is not set: FID/KID/agreement skipped")
    return {"ckpt_path": ckpt, "quality": quality}
