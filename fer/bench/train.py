"""Training-speed benchmark: the run's own datamodule, model and trainer, timed per step."""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig

from fer.training.train import build


class StepTimer(L.Callback):
    """Times training steps after `warmup` steps: compute (batch start to batch end) and the wait
    for data before each step (loading, transfer and device-side augmentation)."""

    def __init__(self, warmup: int = 5):
        self.warmup = warmup
        self.step_seconds: list[float] = []
        self.wait_seconds: list[float] = []
        self.images = 0
        self._batch_end: float | None = None
        self._batch_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._synchronize(pl_module)
        self._batch_start = time.perf_counter()
        if self._batch_end is not None and trainer.global_step >= self.warmup:
            self.wait_seconds.append(self._batch_start - self._batch_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._synchronize(pl_module)
        self._batch_end = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.step_seconds.append(self._batch_end - self._batch_start)
            self.images += len(batch[1])

    @staticmethod
    def _synchronize(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def summary(self) -> dict[str, float]:
        busy, wait = sum(self.step_seconds), sum(self.wait_seconds[: len(self.step_seconds)])
        return {"steps": len(self.step_seconds), "images_per_s": self.images / (busy + wait),
                "data_wait_share": wait / (busy + wait)}


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
