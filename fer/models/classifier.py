"""The classifier `LightningModule`: a thin wrapper that adds loss, metrics and optimisers to a
plain network built from its config."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from fer import EMOTIONS, FERError
from fer.checkpoints import read_checkpoint
from fer.data.augment import batch_mix, center_crop

PIXEL_MEAN, PIXEL_STD = 0.5077, 0.2550
"""FER-2013 Training pixel statistics (on [0, 1] images): inputs are standardised with them."""
PER_FACE_MIN_STD = 1 / 255
"""A blank face (FER-2013 has a few) is divided by one grey level, not by zero."""


def _plain(config: Any) -> Any:
    """Hydra configs -> plain dicts, so hyperparameters pickle into checkpoints that load with
    `weights_only=True`."""
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class EmotionClassifier(L.LightningModule):
    """Takes (B, 1, H, W) float faces in [0, 1]; `net`, `optimizer` and `scheduler` are Hydra
    configs (the optimizer and scheduler `_partial_`), so a checkpoint rebuilds itself.

    `class_weights` weigh the loss per class; `logit_adjustment` (per-class offsets, e.g. the log
    prior) is added to the logits inside the loss only, so the predictions are balanced (Menon et
    al. 2021). `mixup_alpha` / `cutmix_alpha` > 0 mix training batches (the loss takes the soft targets, the
    metrics the hard labels); `compile` compiles the net in place for training only, so checkpoints
    keep plain parameter names and evaluation does not compile.

    `distill` (Hinton et al. 2015): `{teachers: [classifier checkpoints], weight, temperature}` adds
    weight x T^2 x KL(teachers' mean softened probabilities || the student's) to the loss, on the same
    augmented batch; the teachers' soft targets carry FER-2013's label ambiguity. They are loaded when
    training starts, frozen, and never part of the student's checkpoint; their forward passes count in
    the run's FLOP. With `flip: true` each teacher also reads every face mirrored and gives the mean of
    both views (flip test-time augmentation: a stronger teacher for two of its forward passes).

    `init_from` (a classifier checkpoint of the same net) starts training from its weights instead of
    random ones. With `retrain_last_layer` the net is frozen, BatchNorm statistics included, and only
    its last linear layer is re-initialised and trained: decoupled classifier re-training (cRT, Kang et
    al. 2020), which with class-balanced batches (`data.balance=oversample`) re-draws the decision
    boundaries of features learnt from the natural class frequencies.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        logit_adjustment: list[float] | None = None,
        channels_last: bool = True,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        compile: bool = False,
        distill: dict | None = None,
        init_from: str | None = None,
        retrain_last_layer: bool = False,
        standardize_per_face: bool = False,
    ):
        super().__init__()
        net, optimizer, scheduler, class_weights, logit_adjustment, distill = (
            _plain(c) for c in (net, optimizer, scheduler, class_weights, logit_adjustment, distill))
        self.save_hyperparameters(logger=False)  # train() logs the whole run config with final metrics
        self.net = instantiate(net)
        if channels_last:  # NHWC convolutions: faster on CPUs (oneDNN) and on GPUs under mixed precision
            self.net = self.net.to(memory_format=torch.channels_last)
        if retrain_last_layer:
            if not init_from:
                raise FERError("model.retrain_last_layer=true re-trains the last layer of a trained net: "
                               "give model.init_from=<checkpoint>")
            self.net.requires_grad_(False)
            self.last_layer().requires_grad_(True)
        weights = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        offsets = torch.tensor(logit_adjustment, dtype=torch.float) if logit_adjustment else None
        self.register_buffer("logit_adjustment", offsets, persistent=False)

        num_classes = len(EMOTIONS)
        self.mix = batch_mix(mixup_alpha, cutmix_alpha, num_classes)
        scores = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        })
        self.train_scores = scores.clone(prefix="train/")
        self.val_scores = scores.clone(prefix="val/")
        self.test_scores = scores.clone(prefix="test/")
        self.val_recall = MulticlassRecall(num_classes, average="none")
        self.teachers: list[EmotionClassifier] = []  # a plain list: not submodules, so not in the checkpoint

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(images))

    def last_layer(self) -> nn.Linear:
        """The net's last linear layer: the classifier that decoupled re-training re-draws."""
        return [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]

    def setup(self, stage: str) -> None:
        """`init_from`'s weights, loaded before fitting starts (not when resuming: Lightning then restores
        the run's own weights after this hook); a checkpoint of this run, loaded later for evaluation,
        never reads `init_from` again. A net that only re-trains its last layer starts in eval mode."""
        if stage != "fit":
            return
        if self.hparams.init_from and not self.trainer.ckpt_path:
            state = read_checkpoint(self.hparams.init_from, {"net"}, "classifier")["state_dict"]
            try:
                self.load_state_dict(state)
            except RuntimeError as error:  # its first line only says "Error(s) in loading state_dict"
                detail = " ".join(line.strip() for line in str(error).splitlines()[1:3])
                raise FERError(f"model.init_from={self.hparams.init_from} holds another net than model.net: {detail}") from error
            if self.hparams.retrain_last_layer:
                self.last_layer().reset_parameters()
        self.train()

    def train(self, mode: bool = True) -> EmotionClassifier:
        """With `retrain_last_layer` the net stays in eval mode while its last layer trains: its
        BatchNorm statistics never move and dropout stays off, so the features are the trained net's."""
        super().train(mode)
        if self.hparams.get("retrain_last_layer"):
            self.net.eval()
        return self

    def standardize(self, images: torch.Tensor) -> torch.Tensor:
        """What the net sees of (B, 1, H, W) faces in [0, 1]: standardised, in its memory format. Per face
        (`standardize_per_face`), each face's own mean and standard deviation take out its brightness and
        contrast (Tang 2013's FER-2013 winner); else Training's pixel statistics."""
        if self.hparams.get("standardize_per_face"):
            mean, std = images.mean(dim=(-2, -1), keepdim=True), images.std(dim=(-2, -1), keepdim=True)
            images = (images - mean) / std.clamp_min(PER_FACE_MIN_STD)
        else:
            images = (images - PIXEL_MEAN) / PIXEL_STD
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices or (mixed) class probabilities."""
        if self.logit_adjustment is not None:
            logits = logits + self.logit_adjustment
        return F.cross_entropy(logits, targets, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing)

    def on_fit_start(self):
        if self.hparams.compile:
            self.net.compile()  # in place: the state dict keeps its names (no `_orig_mod.`)
        if self.hparams.distill and not self.teachers:
            self.teachers = [load_classifier(path)[0].requires_grad_(False).to(self.device) for path in self.hparams.distill["teachers"]]

    def distillation_loss(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """T^2 x KL(the teachers' mean softened probabilities || the student's softened probabilities)."""
        temperature = self.hparams.distill.get("temperature", 1.0)
        views = [images, images.flip(-1)] if self.hparams.distill.get("flip", False) else [images]
        with torch.no_grad():
            target = torch.stack([t(view).div(temperature).softmax(dim=1) for t in self.teachers for view in views]).mean(dim=0)
        return F.kl_div(logits.div(temperature).log_softmax(dim=1), target, reduction="batchmean") * temperature**2

    def training_step(self, batch, batch_idx):
        images, labels = batch
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)
        logits = self(images)
        loss = self._loss(logits, targets)
        if self.teachers:
            weight = self.hparams.distill.get("weight", 0.5)
            distillation = self.distillation_loss(logits, images)
            self.log("train/distill_loss", distillation, on_step=False, on_epoch=True)
            loss = (1 - weight) * loss + weight * distillation
        self.train_scores.update(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_scores, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.val_scores.update(logits, labels)
        self.val_recall.update(logits, labels)
        self.log("val/loss", self._loss(logits, labels))
        self.log_dict(self.val_scores, prog_bar=True)
        return logits  # for callbacks such as the confusion-matrix figure

    def on_validation_epoch_end(self):
        recall = self.val_recall.compute()
        self.log_dict({f"val/recall_{name}": value for name, value in zip(EMOTIONS, recall)})
        self.val_recall.reset()

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.test_scores.update(logits, labels)
        self.log("test/loss", self._loss(logits, labels))
        self.log_dict(self.test_scores)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of (B, 1, H, W) faces, or of (B, V, 1, H, W) test-time views: the
        mean over each face's V views."""
        if images.dim() == 5:
            return self(images.flatten(0, 1)).softmax(dim=1).unflatten(0, images.shape[:2]).mean(dim=1)
        return self(images).softmax(dim=1)

    def predict_step(self, batch, batch_idx):
        images, _ = batch
        return self.probabilities(images)

    def parameter_groups(self) -> list[dict]:
        """The trainable parameters in two groups: the hidden layers' weights (every conv and linear weight
        but the first and the last layer's), flagged `hidden_matrix` for optimisers that treat them apart
        (MuonAdamW: Muon there), and the rest (input and output layers, biases, BatchNorm); other
        optimisers ignore the flag."""
        layers = [m for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hidden = {id(layer.weight) for layer in layers[1:-1]}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) in hidden], "hidden_matrix": True},
                  {"params": [p for p in trainable if id(p) not in hidden], "hidden_matrix": False}]
        return [group for group in groups if group["params"]]

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameter_groups())
        if not self.hparams.scheduler:
            return optimizer
        make_scheduler = instantiate(self.hparams.scheduler)
        if "total_steps" in inspect.signature(make_scheduler.func).parameters and "total_steps" not in make_scheduler.keywords:
            # one-cycle style schedules span the whole run, whose length only the trainer knows
            make_scheduler = partial(make_scheduler, total_steps=int(self.trainer.estimated_stepping_batches))
        scheduler = make_scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}


def load_classifier(path: str | Path) -> tuple[EmotionClassifier, dict]:
    """A classifier and its checkpoint, loaded safely (`weights_only=True`)."""
    checkpoint = read_checkpoint(path, {"net"}, "classifier")
    model = EmotionClassifier(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


class ClassifierFeatures(nn.Module):
    """(B, 1, 48, 48) faces in [0, 1] -> the classifier's penultimate activations (B, d), seen as
    the classifier was evaluated (central `image_size` crop, its standardisation). Frozen, and in
    eval mode whenever it reads faces: in a GAN's feature discriminator only the images it is given
    get gradients, and its BatchNorm statistics never move."""

    def __init__(self, classifier: EmotionClassifier, image_size: int = 48):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.image_size = image_size
        net = classifier.net
        if hasattr(net, "penultimate"):
            self._embed: Callable[[torch.Tensor], torch.Tensor] = net.penultimate
        else:  # any net: the input of its last linear layer
            last = classifier.last_layer()
            self._embed = lambda x: self._hooked(net, last, x)
        with torch.no_grad():
            self.num_features = int(self(torch.rand(2, 1, 48, 48)).shape[1])

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ClassifierFeatures:
        """The view of a classifier checkpoint at the image size it was trained on."""
        classifier, checkpoint = load_classifier(path)
        return cls(classifier, checkpoint.get("datamodule_hyper_parameters", {}).get("image_size", 48))

    @staticmethod
    def _hooked(net: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = layer.register_forward_hook(lambda module, args, output: captured.append(args[0]))
        try:
            net(x)
        finally:
            handle.remove()
        return captured[0]

    def _view(self, images: torch.Tensor) -> torch.Tensor:
        """The central crop the classifier reads. Eval mode is set on every call, not once: inside a
        LightningModule, Lightning sets each submodule's mode from its own record."""
        self.eval()
        return center_crop(images.float(), self.image_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate activations, differentiable with respect to `images` (a GAN's feature
        discriminator)."""
        return self._embed(self.classifier.standardize(self._view(images))).flatten(1).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, 7) of the same view."""
        return self.classifier(self._view(images)).softmax(dim=1)
