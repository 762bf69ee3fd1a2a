"""The one LightningDataModule: cached uint8 splits in, augmented float batches on the device out."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from fer import EMOTIONS, FERError
from fer.data.augment import BatchAugment, center_crop, to_float
from fer.data.fer2013 import Split, aligned_split, load_image_folder, load_split

log = logging.getLogger(__name__)

BALANCE_OPTIONS = ("none", "class_weights", "oversample", "logit_adjust", "gan")  # gan: GAN samples in extra_train_dirs
EVAL_SPLITS = ("val", "test")


PREPROCESSING_KEYS = ("align", "align_options", "image_size")
"""The data options a checkpoint needs to see faces as in training; where data lives is not one."""


def preprocessing_of(checkpoint: dict) -> dict:
    """How a checkpoint's faces were prepared (alignment, crop size), from its saved DataModule
    options; the rest of them (batch sizes, augmentation, folders, options of older versions) is not
    needed to evaluate or ship it."""
    return {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if k in PREPROCESSING_KEYS}


class FERDataModule(L.LightningDataModule):
    """FER-2013 under the official protocol: train = Training (+ extra folders), val = PublicTest,
    test = PrivateTest (or `test_dir`).

    Batches are whole index lists into in-memory uint8 tensors (no per-sample Python); they are
    converted, augmented (training only) and cropped after the transfer to the training device.
    With `on_device`, the tensors themselves are moved to that device once per loader, so a batch
    is gathered there and nothing crosses the bus per step. Under DDP each process loads its own share of the batches (the
    trainer's `use_distributed_sampler` must be off: conf/trainer/ddp.yaml).
    """

    def __init__(
        self,
        root: str,
        cache_dir: str,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        balance: str = "none",
        align: bool = False,
        align_options: dict[str, Any] | None = None,
        image_size: int = 48,
        augment: dict[str, Any] | None = None,
        extra_train_dirs: Sequence[str] = (),
        test_dir: str | None = None,
        eval_split: str = "test",
        num_workers: int = 0,
        on_device: bool = False,
    ):
        super().__init__()
        if balance not in BALANCE_OPTIONS:
            raise FERError(f"data.balance must be one of {list(BALANCE_OPTIONS)}, got {balance!r}")
        if balance == "gan" and not extra_train_dirs:
            raise FERError("data.balance=gan needs the generated folders in data.extra_train_dirs "
                           "(scripts/pipeline.py adds them; or scripts/generate.py, then data.extra_train_dirs=[FOLDER])")
        if eval_split not in EVAL_SPLITS:
            raise FERError(f"eval split must be one of {list(EVAL_SPLITS)}, got {eval_split!r}")
        if not 8 <= image_size <= 48:
            raise FERError(f"data.image_size must be between 8 and 48 (a crop of the 48x48 faces), got {image_size}")
        if on_device and num_workers:
            raise FERError(f"data.on_device keeps the data on the training device: it needs data.num_workers=0, got {num_workers}")
        self.save_hyperparameters(logger=False)
        try:
            self.augment = BatchAugment(output_size=image_size, **(augment or {}))
        except (TypeError, ValueError) as error:
            raise FERError(f"data.augment: {error}") from error
        self.splits: dict[str, Split] = {}
        self._flip_parity: torch.Tensor | None = None  # per training row, for augment.alternate_flip

    # -- data ------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the splits `stage` needs: from the on-disk cache, or decoded (and aligned) once."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": (self.hparams.eval_split,)}
        for name in wanted.get(stage, ("train", "val", "test")):
            if name not in self.splits:
                self.splits[name] = self._load(name)
                log.info("%s split: %d images, per class %s", name, len(self.splits[name]),
                         dict(zip(EMOTIONS, self.splits[name].class_counts().tolist())))

    def _load(self, name: str) -> Split:
        hp = self.hparams
        if name == "test" and hp.test_dir:
            split = load_image_folder(hp.test_dir, hp.cache_dir)
        else:
            split = load_split(hp.root, name, hp.cache_dir)
        if hp.align:
            split = aligned_split(split, hp.cache_dir, hp.root, **(hp.align_options or {}))
        if name == "train":
            # Extra folders (e.g. GAN samples) join Training only; they are already face crops.
            extras = [load_image_folder(folder, hp.cache_dir) for folder in hp.extra_train_dirs]
            split = Split.concat([split, *extras]) if extras else split
        return split

    @property
    def class_weights(self) -> list[float] | None:
        """Loss weights inversely proportional to class frequency, for balance=class_weights."""
        if self.hparams.balance != "class_weights":
            return None
        self.setup("fit")
        counts = self.splits["train"].class_counts().float().clamp(min=1)
        return (counts.sum() / (len(counts) * counts)).tolist()

    @property
    def logit_adjustment(self) -> list[float] | None:
        """log of the Training class prior, for balance=logit_adjust: the loss sees logits + log prior
        (Menon et al. 2021), so the bare logits the model predicts with are balanced."""
        if self.hparams.balance != "logit_adjust":
            return None
        self.setup("fit")
        counts = self.splits["train"].class_counts().float().clamp(min=1)
        return (counts / counts.sum()).log().tolist()

    # -- loaders ---------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        split = self.splits["train"]
        if self.hparams.balance == "oversample":
            weights = (1.0 / split.class_counts().float().clamp(min=1))[split.labels]
            sampler = WeightedRandomSampler(weights, num_samples=len(split), replacement=True)
            if self._distributed:
                raise FERError("data.balance=oversample is not sharded across DDP processes: use data.balance=class_weights")
        else:
            sampler = self._sampler(len(split), shuffle=True)
        return self._loader(split, IndexBatches(sampler, self.hparams.batch_size, drop_last=True), with_indices=True)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.hparams.eval_split)

    def _eval_loader(self, name: str) -> DataLoader:
        split = self.splits[name]
        return self._loader(split, IndexBatches(self._sampler(len(split), shuffle=False), self.hparams.eval_batch_size, drop_last=False))

    @property
    def _distributed(self) -> bool:
        return self.trainer is not None and self.trainer.world_size > 1

    def _sampler(self, size: int, shuffle: bool) -> Sampler:
        """All indices, or under DDP this process's share (the same seed on every process)."""
        if self._distributed:
            return DistributedSampler(range(size), num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                      shuffle=shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return RandomSampler(range(size)) if shuffle else SequentialSampler(range(size))

    def _loader(self, split: Split, batches: BatchSampler, with_indices: bool = False) -> DataLoader:
        """Batches of (images, labels), and with `with_indices` their rows in the split (for the alternating flip)."""
        tensors = (split.images, split.labels) + ((torch.arange(len(split)),) if with_indices else ())
        if self.hparams.on_device and self.trainer is not None:
            tensors = tuple(t.to(self.trainer.strategy.root_device) for t in tensors)
        # batch_size=None: each sampled item is already a whole batch of indices.
        return DataLoader(TensorDataset(*tensors), sampler=batches, batch_size=None, num_workers=self.hparams.num_workers,
                          pin_memory=torch.cuda.is_available() and not self.hparams.on_device)

    # -- device-side transforms ------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Sequence[torch.Tensor], dataloader_idx: int):
        images, labels = batch[:2]
        if self.trainer is not None and self.trainer.training:
            return self.augment(to_float(images), self.mirrored(batch[2], self.trainer.current_epoch)), labels
        return self.eval_transform(images), labels

    def mirrored(self, indices: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """With `augment.alternate_flip`, which of the training rows `indices` are mirrored in `epoch`: each
        row every other epoch, from a random starting parity per row (drawn from the run's seed, so a
        resumed run keeps it); else None (a coin toss per image)."""
        if not self.augment.alternate_flip:
            return None
        if self._flip_parity is None:
            seed = torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
            self._flip_parity = torch.randint(0, 2, (len(self.splits["train"]),), generator=seed)
        return (self._flip_parity[indices.cpu()] + epoch) % 2 == 1

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        """The deterministic view of uint8 (B, 48, 48) faces that the model is evaluated on."""
        return center_crop(to_float(images), self.hparams.image_size)


class IndexBatches(BatchSampler):
    """Batches of indices that pass Lightning's per-epoch `set_epoch` on to a DistributedSampler,
    so that DDP reshuffles every epoch."""

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
