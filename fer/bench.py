"""Training-speed benchmark: the run's own datamodule, model and trainer, timed per step."""

from __future__ import annotations

from omegaconf import DictConfig

from fer.callbacks import StepTimer
from fer.train import build


def bench_train(cfg: DictConfig) -> dict[str, float]:
    """Train `cfg.bench.warmup + cfg.bench.steps` steps (no validation, logging or checkpoints) and
    print images/s, the implied epoch time and the share of step time spent waiting for data."""
    timer = StepTimer(warmup=cfg.bench.warmup)
    datamodule, model, trainer = build(
        cfg, callbacks=[timer], logger=False, enable_checkpointing=False, limit_val_batches=0,
        max_steps=cfg.bench.warmup + cfg.bench.steps, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    result = timer.summary()
    result["epoch_s"] = len(datamodule.splits["train"]) / result["images_per_s"]
    print(f"device={model.device.type} steps={result['steps']} batch={cfg.data.batch_size} "
          f"images/s={result['images_per_s']:.0f} epoch_s={result['epoch_s']:.1f} "
          f"data_wait={100 * result['data_wait_share']:.1f}%")
    return result
