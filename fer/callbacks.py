"""Lightning callbacks of the project."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch

from fer.viz import curves_figure, save


class TrainingCurves(L.Callback):
    """Writes the per-epoch loss/accuracy/F1 curves to a PNG after every epoch (TensorBoard has
    the same scalars; the PNG is for reading a run without it)."""

    def __init__(self, path: str, keys: tuple[str, ...] = ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/f1_macro")):
        self.path = Path(path)
        self.keys = keys
        self.history: dict[str, list[float]] = defaultdict(list)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for key in self.keys:
            if key in trainer.callback_metrics:
                self.history[key].append(float(trainer.callback_metrics[key]))
        save(curves_figure(self.history), self.path)

    def state_dict(self) -> dict:
        return {"history": dict(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = defaultdict(list, state_dict["history"])


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
