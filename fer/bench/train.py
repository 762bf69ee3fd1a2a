"""Training-speed benchmark: the run's own datamodule, model and trainer, timed per step."""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig

from fer.training.callbacks import TrainingFlops
from fer.training.train import build


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        synchronize(pl_module.device)
        self._batch_start = time.perf_counter()
        if self._batch_end is not None and trainer.global_step >= self.warmup:
            self.wait_seconds.append(self._batch_start - self._batch_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self._batch_end = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.step_seconds.append(self._batch_end - self._batch_start)
            self.images += len(batch[1])

    def summary(self) -> dict[str, float]:
        busy, wait = sum(self.step_seconds), sum(self.wait_seconds[: len(self.step_seconds)])
        return {"steps": len(self.step_seconds), "images_per_s": self.images / (busy + wait),
                "data_wait_share": wait / (busy + wait)}


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an fp32 size x size matrix product on `device` with torch's current threads: the
    yardstick for the FLOP rate a training step reaches."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def bench_train(cfg: DictConfig) -> dict[str, float]:
    """Train `cfg.bench.warmup + cfg.bench.steps` steps (no validation, logging or checkpoints) and
    print images/s, the implied epoch time, the share of step time spent waiting for data, and the
    FLOP of a training step and the rate achieved against the machine's own matrix-product peak."""
    timer, flops = StepTimer(warmup=cfg.bench.warmup), TrainingFlops()
    datamodule, model, trainer = build(
        cfg, callbacks=[timer, flops], logger=False, enable_checkpointing=False, limit_val_batches=0,
        max_steps=cfg.bench.warmup + cfg.bench.steps, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    result = timer.summary()
    result["epoch_s"] = len(datamodule.splits["train"]) / result["images_per_s"]
    result["flop_per_step"] = flops.flops_per_batch
    result["flop_per_s"] = flops.flops_per_batch / cfg.data.batch_size * result["images_per_s"]
    result["matmul_peak_flop_per_s"] = matmul_peak(model.device)
    memory = ""
    if model.device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(model.device) / 2**30
        memory = f" peak_gpu_memory={result['peak_gpu_memory_gib']:.2f}GiB"
    print(f"device={model.device.type} steps={result['steps']} batch={cfg.data.batch_size} "
          f"images/s={result['images_per_s']:.0f} epoch_s={result['epoch_s']:.1f} "
          f"data_wait={100 * result['data_wait_share']:.1f}%{memory}")
    print(f"flop/step={result['flop_per_step'] / 1e9:.2f}G (forward+backward) achieved={result['flop_per_s'] / 1e12:.3f} TFLOP/s "
          f"matmul_peak={result['matmul_peak_flop_per_s'] / 1e12:.3f} TFLOP/s (fp32 2048^3, {torch.get_num_threads()} threads) "
          f"share={100 * result['flop_per_s'] / result['matmul_peak_flop_per_s']:.0f}%")
    return result
