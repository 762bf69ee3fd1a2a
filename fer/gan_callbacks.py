"""Lightning callbacks of the GAN run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torchvision.utils import make_grid

from fer import EMOTIONS
from fer.viz import image_grid, save


def fixed_latents(latent_dim: int, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` latent vectors for each class (the same vectors for every class), and their labels."""
    z = torch.randn(per_class, latent_dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(len(EMOTIONS)).repeat_interleave(per_class)
    return z.repeat(len(EMOTIONS), 1), labels


def sample_grid_figure(model, per_class: int = 8, seed: int = 0, title: str = ""):
    """One row per class, one column per fixed latent: the labelled PNG figure of `model.sample`."""
    z, labels = fixed_latents(model.latent_dim, per_class, seed)
    images = model.sample(z, labels).cpu()
    return image_grid(images, labels.tolist(), columns=per_class, title=title), images


class SampleGrid(L.Callback):
    """A fixed-latent sample grid per class (one row per class) from the GAN's sampling generator
    (its EMA copy when it has one): logged to TensorBoard after every epoch and written as a PNG at
    the end of training."""

    def __init__(self, path: str, per_class: int = 8, seed: int = 0):
        self.path = Path(path)
        self.per_class, self.seed = per_class, seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        z, labels = fixed_latents(pl_module.latent_dim, self.per_class, self.seed)
        grid = make_grid(pl_module.sample(z, labels).cpu(), nrow=self.per_class, padding=2, pad_value=1.0)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("gan/samples", grid, global_step=trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            figure, _ = sample_grid_figure(pl_module, self.per_class, self.seed,
                                           f"after {trainer.current_epoch} epochs: one row per class, fixed latents")
            save(figure, self.path)
