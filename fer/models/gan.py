"""The class-conditional DCGAN `LightningModule`: a thin wrapper (manual optimization, adversarial
loss, DiffAugment, EMA of the generator) around the plain nets in `fer.models.gan_nets`, and the
sampling side: `FaceGenerator`, loaded from a training checkpoint or the shipped generator."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fer import FERError
from fer.checkpoints import read_checkpoint
from fer.models.classifier import ClassifierFeatures, _plain
from fer.models.gan_nets import FeatureCritic

LOSSES = ("hinge", "bce")


def _build(key: str, config: dict) -> torch.nn.Module:
    """A net from its config; a bad option is a `FERError` naming the config key."""
    try:
        return instantiate(config)
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise FERError(f"{key}: {cause}") from error


@torch.no_grad()
def draw(net: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 1, 48, 48) faces in [0, 1] from a generator net in eval mode (BatchNorm's running
    statistics, not the batch's), on the net's device; the net's mode is restored afterwards."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        return (net(z.to(device), labels.to(device)) + 1) / 2
    finally:
        net.train(was_training)


class FaceGenerator(torch.nn.Module):
    """A generator net for sampling only: (z, labels) -> (B, 1, 48, 48) faces in [0, 1]."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net.eval()

    @property
    def latent_dim(self) -> int:
        return self.net.latent_dim

    def sample(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return draw(self.net, z, labels)


def load_generator(path: str | Path) -> FaceGenerator:
    """The sampling generator of a GAN training checkpoint (its EMA copy when it has one) or of a
    shipped generator file (`fer.training.ship_gan`), loaded safely (`weights_only=True`)."""
    checkpoint = read_checkpoint(path, {"generator"}, "GAN generator (fer.models.gan)")
    state = checkpoint["state_dict"]
    for prefix in ("ema.module.", "generator.", ""):  # EMA of a training checkpoint, its raw G, a shipped G
        weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix) and not k.startswith("ema.n_")}
        if weights:
            break
    net = _build("generator", checkpoint["hyper_parameters"]["generator"])
    net.load_state_dict(weights)
    return FaceGenerator(net)


class ConditionalGAN(L.LightningModule):
    """Takes (B, 1, 48, 48) float faces in [0, 1] with their labels; samples in the same range.

    `generator`, `discriminator`, `optimizer_g`, `optimizer_d` are Hydra configs (the optimizers
    `_partial_`), stored as plain dicts so a checkpoint rebuilds itself and loads with
    `weights_only=True`. Stabilisers: `loss` hinge or BCE, one-sided `label_smoothing` of the real
    targets (BCE only), spectral norm (in the discriminator's config), `diffaugment` (a Hydra config
    of `fer.models.diffaugment.DiffAugment`: every image D sees, real or generated, is augmented;
    null: none), two learning rates (`lr` for G, `lr_d` for D, which the optimiser configs use),
    `ema_decay` (an EMA copy of G that `sample` uses; null: sample the raw G), `clip_grad_norm`, and
    `feature_ckpt`: a real-data classifier checkpoint whose frozen penultimate features feed a second,
    trainable discriminator head (`FeatureCritic`, vision-aided GAN), its losses weighted by
    `feature_weight` and added to D's and G's.
    """

    def __init__(
        self,
        generator: dict,
        discriminator: dict,
        optimizer_g: dict,
        optimizer_d: dict,
        loss: str = "hinge",
        label_smoothing: float = 0.0,
        ema_decay: float | None = 0.999,
        aux_weight: float = 1.0,
        clip_grad_norm: float | None = None,
        diffaugment: dict | None = None,
        lr: float | None = None,    # G's learning rate (the optimiser configs interpolate it)
        lr_d: float | None = None,  # D's, when it differs (two time-scale update rule)
        feature_ckpt: str | None = None,
        feature_weight: float = 1.0,
    ):
        super().__init__()
        generator, discriminator, optimizer_g, optimizer_d, diffaugment = (
            _plain(c) for c in (generator, discriminator, optimizer_g, optimizer_d, diffaugment))
        if loss not in LOSSES:
            raise FERError(f"model.loss must be one of {list(LOSSES)}, got {loss!r}")
        if not 0 <= label_smoothing < 1:
            raise FERError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise FERError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        if feature_weight < 0:
            raise FERError(f"model.feature_weight must be >= 0, got {feature_weight}")
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.generator = _build("model.generator", generator)
        self.discriminator = _build("model.discriminator", discriminator)
        self.augment = _build("model.diffaugment", diffaugment) if diffaugment else None
        self.features = ClassifierFeatures.from_checkpoint(feature_ckpt) if feature_ckpt else None
        self.feature_critic = FeatureCritic(self.features.num_features, self.num_classes) if self.features else None
        self.ema = (AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
                    if ema_decay is not None else None)
        if self.ema is not None:
            self.ema.requires_grad_(False)

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    @property
    def num_classes(self) -> int:
        return self.generator.num_classes

    def sample(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, 1, 48, 48) faces in [0, 1] from the EMA generator (the raw one without EMA), in eval mode."""
        return draw(self.ema.module if self.ema is not None else self.generator, z, labels)

    # -- losses ----------------------------------------------------------------------------------
    def _d_adversarial(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        target = torch.full_like(real, 1 - self.hparams.label_smoothing)
        return F.binary_cross_entropy_with_logits(real, target) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))

    def _g_adversarial(self, fake: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "hinge":
            return -fake.mean()
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        images, labels = batch
        real = images * 2 - 1
        z = torch.randn(len(labels), self.latent_dim, device=self.device)

        fake = self.generator(z, labels)

        # discriminator: real vs generated (only D's parameters take gradients)
        self.toggle_optimizer(opt_d)
        seen_real, seen_fake = self._augment(real, fake.detach())
        d_real, cls_real = self.discriminator(seen_real, labels)
        d_fake, _ = self.discriminator(seen_fake, labels)
        d_loss = self._d_adversarial(d_real, d_fake)
        if cls_real is not None:  # AC-GAN: D also learns to name the class, from real faces only (G cannot collude)
            d_loss = d_loss + self.hparams.aux_weight * F.cross_entropy(cls_real, labels)
        if self.feature_critic is not None:  # the second discriminator, on the frozen classifier's features
            d_loss = d_loss + self.hparams.feature_weight * self._d_adversarial(
                self._feature_logits(seen_real, labels), self._feature_logits(seen_fake, labels))
        self._step(opt_d, d_loss)
        self.untoggle_optimizer(opt_d)

        # generator: fool the updated D on the same latent batch
        self.toggle_optimizer(opt_g)
        g_seen = self._augment(fake)[0]
        g_fake, g_cls = self.discriminator(g_seen, labels)
        g_loss = self._g_adversarial(g_fake)
        if g_cls is not None:
            g_loss = g_loss + self.hparams.aux_weight * F.cross_entropy(g_cls, labels)
        if self.feature_critic is not None:
            g_loss = g_loss + self.hparams.feature_weight * self._g_adversarial(self._feature_logits(g_seen, labels))
        self._step(opt_g, g_loss)
        self.untoggle_optimizer(opt_g)
        if self.ema is not None:
            self.ema.update_parameters(self.generator)

        self.log_dict({"gan/d_loss": d_loss, "gan/g_loss": g_loss}, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict({"gan/d_real": d_real.mean(), "gan/d_fake": d_fake.mean()}, on_step=True, on_epoch=True)

    def _feature_logits(self, seen: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The feature discriminator's logits for faces in [-1, 1] (the classifier reads [0, 1])."""
        return self.feature_critic(self.features.features((seen + 1) / 2), labels)

    def _augment(self, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What D sees: the batches under one sampled DiffAugment transform (unchanged without one)."""
        return self.augment(*batches) if self.augment is not None else batches

    def _step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.clip_grad_norm:  # Trainer(gradient_clip_val) does not apply under manual optimization
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.clip_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()

    def configure_optimizers(self):
        opt_g = instantiate(self.hparams.optimizer_g)(params=self.generator.parameters())
        critics = [self.discriminator] + ([self.feature_critic] if self.feature_critic is not None else [])
        opt_d = instantiate(self.hparams.optimizer_d)(params=[p for critic in critics for p in critic.parameters()])
        return opt_g, opt_d
