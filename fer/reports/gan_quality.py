"""GAN sample quality without any downloaded network: FID and KID per class on the penultimate
features of a classifier trained on real FER-2013 only, and the agreement rate (the share of
class-c samples that this classifier labels c)."""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fer import EMOTIONS
from fer.data.augment import center_crop
from fer.models.classifier import EmotionClassifier

log = logging.getLogger(__name__)


class ClassifierFeatures(nn.Module):
    """(B, 1, 48, 48) faces in [0, 1] -> the classifier's penultimate activations (B, d), seen as
    the classifier was evaluated (central `image_size` crop, its standardisation). Always in eval
    mode: torchmetrics' `.train()` calls do not reach it."""

    def __init__(self, classifier: EmotionClassifier, image_size: int = 48):
        super().__init__()
        self.classifier = classifier.eval()
        self.image_size = image_size
        net = classifier.net
        if hasattr(net, "penultimate"):
            self._embed: Callable[[torch.Tensor], torch.Tensor] = net.penultimate
        else:  # any net: the input of its last linear layer
            last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
            self._embed = lambda x: self._hooked(net, last, x)
        with torch.no_grad():
            self.num_features = int(self(torch.rand(2, 1, 48, 48)).shape[1])

    @staticmethod
    def _hooked(net: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = layer.register_forward_hook(lambda module, args, output: captured.append(args[0]))
        try:
            net(x)
        finally:
            handle.remove()
        return captured[0]

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.classifier.standardize(center_crop(images.float(), self.image_size))
        return self._embed(x).flatten(1).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, 7) of the same view."""
        return self.classifier(center_crop(images.float(), self.image_size)).softmax(dim=1)


class Precomputed(nn.Module):
    """The feature extractor handed to torchmetrics when the features are computed beforehand
    (once per image set, shared by FID, KID and the real-data floor): the identity on (N, d)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def embed(features: ClassifierFeatures, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, d) penultimate features of (N, 1, 48, 48) faces in [0, 1]."""
    return torch.cat([features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def distances(real: torch.Tensor, fake: torch.Tensor, kid_subsets: int = 50, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two sets of (N, d) features, by torchmetrics."""
    extractor = Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=extractor, normalize=True)
    fid.set_dtype(torch.float64)
    kid = KernelInceptionDistance(feature=extractor, normalize=True, subsets=kid_subsets,
                                  subset_size=min(kid_subset_size, len(real), len(fake)))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


@torch.no_grad()
def agreement(features: ClassifierFeatures, images: torch.Tensor, label: int, batch_size: int = 256) -> tuple[float, float]:
    """The share of `images` that the classifier labels `label`, and its mean probability of `label`."""
    probs = torch.cat([features.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return float((probs.argmax(1) == label).float().mean()), float(probs[:, label].mean())


def quality_report(
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    sample: Callable[[int, int], torch.Tensor],
    features: ClassifierFeatures,
    n_per_class: int = 1000,
    seed: int = 0,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
) -> dict:
    """Per class and averaged over classes: `real_images` (N, 1, 48, 48) in [0, 1] with
    `real_labels`; `sample(label, n)` returns n generated faces of that class. Each class compares
    n = min(n_per_class, real count) real and as many generated faces. The real-data floor
    (`fid_real_halves`, `kid_real_halves`): the same distances between two disjoint halves of the
    real class, what a perfect generator would score with about as many samples."""
    generator = torch.Generator().manual_seed(seed)
    report: dict = {"per_class": {}}
    for label, name in enumerate(EMOTIONS):
        pool = real_images[real_labels == label]
        if len(pool) < 4:
            log.warning("quality: %s has %d real images, skipped", name, len(pool))
            continue
        pool = pool[torch.randperm(len(pool), generator=generator)[: 2 * n_per_class]]
        pool_features = embed(features, pool)
        n = min(n_per_class, len(pool))
        fake = sample(label, n)
        scores = distances(pool_features[:n], embed(features, fake), kid_subsets, kid_subset_size)
        scores["agreement"], scores["mean_confidence"] = agreement(features, fake, label)
        half = len(pool) // 2
        floor = distances(pool_features[:half], pool_features[half:], kid_subsets, kid_subset_size)
        scores["fid_real_halves"], scores["kid_real_halves"] = floor["fid"], floor["kid_mean"]
        scores["real_agreement"] = agreement(features, pool[:n], label)[0]
        scores["n_real"], scores["n_fake"] = n, len(fake)
        report["per_class"][name] = scores
        log.info("quality %s: %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()})
    classes = report["per_class"].values()
    for key in ("fid", "kid_mean", "agreement", "fid_real_halves", "real_agreement"):
        report[f"mean_{key}"] = sum(c[key] for c in classes) / max(len(classes), 1)
    return report
