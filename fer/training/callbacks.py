"""The Lightning callbacks of the training stages: the run's ETA, curves and confusion matrices of
a classifier run, sample grids and per-class quality of a GAN run."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from fer import EMOTIONS, FERError
from fer.progress import clock, time_left
from fer.reports.figures import confusion_matrix_figure, curves_figure, image_grid, save
from fer.reports.gan_quality import measure_quality, quality_scalars

log = logging.getLogger(__name__)


class RunETA(L.Callback):
    """The whole run's duration, measured on this machine: once after the first `probe_steps`
    training batches (their mean time, and the validation sanity check's time per batch, projected
    over every batch of the run), then one line per epoch with the elapsed time and the ETA from the
    mean wall time of this session's epochs (the progress bar's own ETA covers one epoch only)."""

    def __init__(self, probe_steps: int = 20):
        self.probe_steps = probe_steps
        self.val_batch_seconds: float | None = None

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sanity_start = time.monotonic()

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if batches := sum(trainer.num_sanity_val_batches):
            self.val_batch_seconds = (time.monotonic() - self.sanity_start) / batches

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.first_epoch, self.batches_run = time.monotonic(), trainer.current_epoch, 0

    def _epochs(self, trainer: L.Trainer) -> int | None:
        return None if not trainer.is_global_zero or trainer.max_epochs is None or trainer.max_epochs < 0 else trainer.max_epochs

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.batches_run += 1
        if self.batches_run != self.probe_steps or not (epochs := self._epochs(trainer)):
            return
        per_batch = (time.monotonic() - self.start) / self.batches_run
        train_batches = trainer.num_training_batches * (epochs - trainer.current_epoch) - (batch_idx + 1)
        seconds = per_batch * train_batches
        validation = ""
        if self.val_batch_seconds is not None and (val_batches := sum(trainer.num_val_batches)):
            per_epoch = self.val_batch_seconds * val_batches
            seconds += per_epoch * (epochs - trainer.current_epoch)
            validation = f", {clock(per_epoch)} of validation each"
        log.info("measured over the first %d batches: %.3f s a batch, so the run has %s (%d of %d epochs left, %d batches each%s)",
                 self.batches_run, per_batch, time_left(seconds), epochs - trainer.current_epoch, epochs,
                 trainer.num_training_batches, validation)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (epochs := self._epochs(trainer)):
            return
        done = trainer.current_epoch + 1
        elapsed = time.monotonic() - self.start
        left = (epochs - done) * elapsed / (done - self.first_epoch)
        memory = ""
        if pl_module.device.type == "cuda":
            memory = f", peak GPU memory {torch.cuda.max_memory_allocated(pl_module.device) / 2**30:.2f} GiB"
        log.info("epoch %d/%d done: %s elapsed, %s%s", done, epochs, clock(elapsed), time_left(left), memory)


class TrainingFlops(L.Callback):
    """The run's training compute, the budget that does not vary with the machine: the FLOP of a
    training batch (forward, backward and the optimiser's matrix products, such as Muon's orthogonalisation,
    counted by torch's FlopCounterMode on the first batch of each epoch, since progressive resizing changes
    it) times the epoch's batches (of every DDP process),
    summed over the epochs and logged as `train/pflop` after every epoch (and so kept in the run's
    metrics.json and in its checkpoints, so a resumed run goes on counting)."""

    def __init__(self) -> None:
        self.flop = 0.0
        self.flops_per_batch: float | None = None
        self._counter: FlopCounterMode | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if batch_idx == 0 or self.flops_per_batch is None:  # each epoch's first batch, and a resumed run's
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_batch, self._counter = float(self._counter.get_total_flops()), None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.flops_per_batch is not None:
            self.flop += self.flops_per_batch * trainer.num_training_batches * trainer.world_size  # every process's batches
            pl_module.log("train/pflop", self.flop / 1e15, on_epoch=True)

    def state_dict(self) -> dict:
        return {"flop": self.flop}

    def load_state_dict(self, state_dict: dict) -> None:
        self.flop = state_dict["flop"]


class ProgressiveResize(L.Callback):
    """Progressive resizing: the training view sampled at fewer pixels in early epochs (cheaper
    batches, the same field of view), full size from the last entry on. `schedule` maps a first epoch
    to a resolution, e.g. {0: 32, 20: 40}; the evaluation view never changes."""

    def __init__(self, schedule: dict[int, int]):
        self.schedule = sorted((int(epoch), int(size)) for epoch, size in schedule.items())
        if not self.schedule or self.schedule[0][0] != 0 or any(size < 8 for _, size in self.schedule):
            raise FERError(f"callbacks.progressive_resize.schedule must start at epoch 0 with sizes >= 8, got {dict(schedule)}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        size = [size for epoch, size in self.schedule if epoch <= trainer.current_epoch][-1]
        trainer.datamodule.augment.resolution = size


class PatchWhitening(L.Callback):
    """airbench's patch-whitening initialisation of the first convolution: its filters become the
    principal directions of Training patches (of its kernel size, as the net sees them), each scaled
    by 1 / sqrt(its variance + eps) and paired with its negative so that the ReLU keeps both signs.
    The layer's output is then whitened (channel covariance near the identity) from the first step,
    instead of being learnt. Filters beyond twice the patch dimension keep their random init. A
    resumed run, or one that starts from a trained net (`model.init_from`), keeps its weights."""

    def __init__(self, samples: int = 1000, eps: float = 5e-4):
        self.samples, self.eps = samples, eps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path or pl_module.hparams.get("init_from"):
            return
        conv = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Conv2d))
        datamodule = trainer.datamodule
        faces = datamodule.eval_transform(datamodule.splits["train"].images[: self.samples]).to(pl_module.device)
        weight = whitening_filters(pl_module.standardize(faces), conv.kernel_size, self.eps)[: conv.out_channels]
        with torch.no_grad():
            conv.weight[: len(weight)] = weight.to(conv.weight.dtype)
        log.info("patch whitening: %d of the first conv's %d filters set from %d Training faces",
                 len(weight), conv.out_channels, len(faces))


def whitening_filters(images: torch.Tensor, kernel_size: tuple[int, int], eps: float) -> torch.Tensor:
    """(2d, C, kh, kw) filters, d = C x kh x kw, that whiten the patches of (B, C, H, W) images: the
    eigenvectors of the patch covariance, largest variance first, over sqrt(eigenvalue + eps), each
    followed by its negative."""
    patches = F.unfold(images.float(), kernel_size).transpose(1, 2).flatten(0, 1)  # (patches, d)
    variance, directions = torch.linalg.eigh(torch.cov(patches.T))
    order = variance.argsort(descending=True)
    filters = (directions[:, order] / (variance[order] + eps).sqrt()).T
    paired = torch.stack([filters, -filters], dim=1).flatten(0, 1)  # a prefix keeps each direction with its negative
    return paired.view(-1, images.shape[1], *kernel_size)


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


class ConfusionMatrixFigure(L.Callback):
    """Logs the PublicTest (val) confusion matrix as a TensorBoard figure after every validation
    epoch, from the logits that the classifier's `validation_step` returns."""

    def __init__(self) -> None:
        self.confusion = MulticlassConfusionMatrix(len(EMOTIONS))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # beside the model (in fit and in a plain validate), so that DDP syncs it on its device
        self.confusion = self.confusion.to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.confusion.update(outputs.detach(), batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self.confusion.compute()
        self.confusion.reset()
        experiment = getattr(pl_module.logger, "experiment", None)
        if hasattr(experiment, "add_figure") and not trainer.sanity_checking and trainer.is_global_zero:
            figure = confusion_matrix_figure(matrix, f"PublicTest, epoch {trainer.current_epoch}")
            experiment.add_figure("val/confusion_matrix", figure, global_step=trainer.current_epoch)
            plt.close(figure)


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


class GANQuality(L.Callback):
    """Per-class quality of the sampling generator every `every_n_epochs` epochs (agreement with the
    real-data classifier at `classifier_ckpt` next to its PublicTest recall, FID, KID, diversity) as
    TensorBoard scalars `quality/<class>/<key>`: how the conditioning is learnt, class by class.
    Smaller samples than the end-of-run `quality.json`; `classifier_ckpt` null turns it off."""

    def __init__(self, classifier_ckpt: str | None, every_n_epochs: int = 1, n_per_class: int = 250, seed: int = 0):
        self.classifier_ckpt, self.every_n_epochs = classifier_ckpt, every_n_epochs
        self.n_per_class, self.seed = n_per_class, seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.classifier_ckpt or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        splits = trainer.datamodule.splits
        report = measure_quality(pl_module, splits["train"], splits.get("val"), self.classifier_ckpt, self.n_per_class,
                                 self.seed, kid_subsets=10, kid_subset_size=min(100, self.n_per_class))
        for logger in trainer.loggers:
            logger.log_metrics(quality_scalars(report), step=trainer.global_step)
        log.info("epoch %d quality: agreement %s, FID %s", trainer.current_epoch + 1,
                 {n: round(c["agreement"], 2) for n, c in report["per_class"].items()},
                 {n: round(c["fid"], 1) for n, c in report["per_class"].items()})
