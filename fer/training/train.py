"""The training stage: compose data, model, callbacks, loggers and trainer from a Hydra config."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer import FERError
from fer.checkpoints import resume_path
from fer.models.classifier import load_classifier
from fer.models.deploy import FaceClassifier, adjust_probabilities, prior_correction
from fer.training import ship
from fer.training.evaluate import score

log = logging.getLogger(__name__)


RESUMED_IN_A_NEW_FOLDER = r"The dirpath has changed from"
"""Lightning's note when a resumed run checkpoints into its own new run folder, as it does by design."""


@contextmanager
def by_design(*messages: str) -> Iterator[None]:
    """Silence Lightning's warnings (regular expressions) about what a stage does on purpose, while it runs."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        yield


def refuse_ddp_in_a_local_sweep(cfg: DictConfig) -> None:
    """Lightning's `ddp` starts its extra processes by re-running the command line; inside a local
    `-m` sweep each of them would re-run the whole sweep (Lightning issue #11300)."""
    if cfg.trainer.get("strategy") != "ddp" or not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN and hydra.launcher._target_.endswith("BasicLauncher"):
        raise FERError("trainer.strategy=ddp re-runs the command line in every process, and inside a -m sweep that is the "
                       "whole sweep: use trainer.strategy=ddp_spawn (the trainer=ddp default) or hydra/launcher=slurm")


def build(cfg: DictConfig, **trainer_overrides) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """The run's datamodule, model and trainer, as the config wires them (after seeding);
    `trainer_overrides` replace trainer arguments, callbacks and loggers included."""
    refuse_ddp_in_a_local_sweep(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    # _convert_: the class weights and offsets arrive as a plain list, not a ListConfig that weights_only checkpoints refuse
    model = instantiate(cfg.model, class_weights=datamodule.class_weights, logit_adjustment=datamodule.logit_adjustment,
                        _recursive_=False, _convert_="all")
    return datamodule, model, build_trainer(cfg, **trainer_overrides)


def build_trainer(cfg: DictConfig, **trainer_overrides) -> L.Trainer:
    """The trainer of `cfg.trainer` with the callbacks of `cfg.callbacks` and loggers of `cfg.logger`
    (unless `trainer_overrides` replace them)."""
    options = dict(trainer_overrides)
    if "callbacks" not in options:
        options["callbacks"] = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if "logger" not in options:
        options["logger"] = [instantiate(c) for c in (cfg.get("logger") or {}).values()] or False
    return instantiate(cfg.trainer, **options)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the classifier (resuming from `cfg.ckpt_path` when given) and return the PublicTest
    metrics of the best checkpoint, which are also logged to TensorBoard with the run's config."""
    return fit(cfg)[0]


def fit(cfg: DictConfig) -> tuple[dict[str, float], L.LightningDataModule, L.Trainer]:
    """`train`, also returning the datamodule (its loaded splits) and the trainer (its checkpoints).
    The run folder's `metrics.json` keeps the figures a comparison of runs needs (ladder and ablation
    tables): PublicTest of the best checkpoint, epochs, training compute and wall time."""
    started = time.perf_counter()
    datamodule, model, trainer = build(cfg)
    if trainer.limit_val_batches == 0:  # Lightning would train, then validate() would return no metrics at all
        raise FERError(f"trainer.limit_val_batches={trainer.limit_val_batches}: a classifier run selects and scores its "
                       "checkpoint on PublicTest, so it needs validation batches (give at least 1)")
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    ckpt_path = resume_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name / "runs", overrides)
    with by_design(RESUMED_IN_A_NEW_FOLDER):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    pflop = trainer.callback_metrics.get("train/pflop")  # the TrainingFlops callback's; validate() below resets them

    best = best_checkpoint(trainer)
    log.info("best checkpoint: %s", best or "(none saved: the final weights are scored)")
    metrics = trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)[0]
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True), {f"hp/{k}": v for k, v in metrics.items()})
    log.info("PublicTest (val) of the best checkpoint: %s", {k: round(v, 4) for k, v in metrics.items()})
    summary = {"val": metrics, "best_checkpoint": best, "epochs": trainer.current_epoch, "seed": cfg.seed,
               "overrides": list(overrides), "train_pflop": None if pflop is None else float(pflop),
               "fit_seconds": round(time.perf_counter() - started, 1)}  # data, training and the final PublicTest score
    if trainer.is_global_zero:
        scored = load_classifier(best)[0].to(model.device) if best else model
        summary["val_flip"] = flip_tta_scores(scored, datamodule)
        summary["val_prior"] = prior_corrected_scores(scored, datamodule, ship.training_prior(cfg))
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return metrics, datamodule, trainer


def public_test_probabilities(model: L.LightningModule, datamodule: L.LightningDataModule, tta: str) -> torch.Tensor:
    """`model`'s class probabilities of the PublicTest faces, averaged over the `tta` views."""
    classifier = FaceClassifier(model, datamodule.hparams.image_size, tta=tta)
    datamodule.setup("validate")  # a no-op, except in the main process of a ddp_spawn run
    with torch.inference_mode():
        batches = datamodule.splits["val"].images.split(datamodule.hparams.eval_batch_size)
        return torch.cat([classifier(batch.to(model.device)).float().cpu() for batch in batches])


def flip_tta_scores(model: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """PublicTest accuracy and macro-F1 of `model` averaging each face and its mirror (flip TTA), the
    figures a ladder of recipes reports beside the one-view ones."""
    metrics = score(public_test_probabilities(model, datamodule, "flip"), datamodule.splits["val"].labels)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def prior_corrected_scores(model: L.LightningModule, datamodule: L.LightningDataModule, prior: torch.Tensor) -> dict:
    """The post-hoc arm of an imbalance ablation, on the run's own checkpoint: one view, then the
    prior correction -tau * log(`prior`, the real Training prior), tau fitted on PublicTest as the
    ship stage's defaults fit it (`ship_model.py tta=none adjustment.method=prior`: the most balanced
    accuracy at no more than 0.5 point of accuracy), so in-sample figures."""
    probs, labels = public_test_probabilities(model, datamodule, "none"), datamodule.splits["val"].labels
    tau = ship.fit_prior_tau(probs, labels, prior, max_accuracy_drop=0.005, criterion="balanced_accuracy")
    return {"tau": tau, **ship.summary(score(adjust_probabilities(probs, prior_correction(tau, prior)), labels))}


def best_checkpoint(trainer: L.Trainer) -> str:
    """The path of the best checkpoint on the monitored metric, or "" when none was saved."""
    return next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
