"""GAN sample quality without any downloaded network, per class, on the penultimate features of a
classifier trained on real FER-2013 only: FID and KID (torchmetrics, with that feature extractor),
the agreement rate (the share of class-c samples that this classifier labels c, next to its recall
on real PublicTest class-c faces) and diversity (mean pairwise feature distance within the class,
next to the same on real faces)."""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fer import EMOTIONS, FERError
from fer.data.augment import to_float
from fer.models.classifier import ClassifierFeatures

log = logging.getLogger(__name__)


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
    with warnings.catch_warnings():  # its note that it keeps every feature: here they are the two sets given, already in memory
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all extracted features")
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


def diversity(features: torch.Tensor, max_items: int = 500) -> float:
    """Mean pairwise Euclidean distance between (up to `max_items`) feature vectors: near 0 when a
    generator draws the same face for every latent (mode collapse)."""
    features = features[:max_items].double()
    n = len(features)
    return float(torch.cdist(features, features).sum() / (n * (n - 1))) if n > 1 else 0.0


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images


def quality_report(
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    sample: Callable[[int, int], torch.Tensor],
    features: ClassifierFeatures,
    n_per_class: int = 1000,
    seed: int = 0,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
    recall_images: torch.Tensor | None = None,
    recall_labels: torch.Tensor | None = None,
) -> dict:
    """Per class and averaged over classes: `real_images` (N, 1, 48, 48) in [0, 1], or the uint8
    (N, 48, 48) faces of a split (each class's pool is converted alone), with `real_labels`;
    `sample(label, n)` returns n generated faces of that class. Each class compares n =
    min(n_per_class, real count) real and as many generated faces. The real-data floor
    (`fid_real_halves`, `kid_real_halves`): the same distances between two disjoint halves of the
    real class, what a perfect generator would score with about as many samples. With
    `recall_images` (faces the classifier did not train on, e.g. PublicTest) `real_recall` is its
    recall there and `agreement_vs_recall` the generated faces' agreement divided by it."""
    generator = torch.Generator().manual_seed(seed)
    report: dict = {"per_class": {}}
    for label, name in enumerate(EMOTIONS):
        pool = real_images[real_labels == label]
        if len(pool) < 4:
            log.warning("quality: %s has %d real images, skipped", name, len(pool))
            continue
        pool = _as_float(pool[torch.randperm(len(pool), generator=generator)[: 2 * n_per_class]])
        pool_features = embed(features, pool)
        n = min(n_per_class, len(pool))
        fake = sample(label, n)
        fake_features = embed(features, fake)
        scores = distances(pool_features[:n], fake_features, kid_subsets, kid_subset_size)
        scores["agreement"], scores["mean_confidence"] = agreement(features, fake, label)
        half = len(pool) // 2
        floor = distances(pool_features[:half], pool_features[half:], kid_subsets, kid_subset_size)
        scores["fid_real_halves"], scores["kid_real_halves"] = floor["fid"], floor["kid_mean"]
        scores["real_agreement"] = agreement(features, pool[:n], label)[0]
        if recall_images is not None:
            scores["real_recall"] = agreement(features, _as_float(recall_images[recall_labels == label]), label)[0]
            scores["agreement_vs_recall"] = scores["agreement"] / max(scores["real_recall"], 1e-6)
        scores["diversity"] = diversity(fake_features)
        scores["real_diversity"] = diversity(pool_features[:n])
        scores["n_real"], scores["n_fake"] = n, len(fake)
        report["per_class"][name] = scores
        log.info("quality %s: %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()})
    classes = report["per_class"].values()
    keys = ("fid", "kid_mean", "agreement", "fid_real_halves", "real_agreement", "diversity", "real_diversity")
    for key in keys + (("real_recall", "agreement_vs_recall") if recall_images is not None else ()):
        report[f"mean_{key}"] = sum(c[key] for c in classes) / max(len(classes), 1)
    if recall_images is not None:
        report["min_agreement_vs_recall"] = min(c["agreement_vs_recall"] for c in classes)
    return report


def measure_quality(model, reference, held_out, classifier_ckpt: str, n_per_class: int = 1000, seed: int = 0,
                    kid_subsets: int = 50, kid_subset_size: int = 200) -> dict:
    """`quality_report` of `model.sample` (a GAN or a `FaceGenerator`) against the `reference` split
    (Training: FID/KID/diversity) and the `held_out` split (PublicTest: the classifier's real
    recall), on the penultimate features of the real-data classifier at `classifier_ckpt`."""
    if n_per_class < 2:
        raise FERError(f"quality.n_per_class must be at least 2, got {n_per_class}")
    features = ClassifierFeatures.from_checkpoint(classifier_ckpt)

    def sample(label: int, count: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1000 + label)
        chunks = []
        for start in range(0, count, 256):
            z = torch.randn(min(256, count - start), model.latent_dim, generator=generator)
            chunks.append(model.sample(z, torch.full((len(z),), label)).cpu())
        return torch.cat(chunks)

    report = quality_report(reference.images, reference.labels, sample, features, n_per_class=n_per_class,
                            seed=seed, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                            recall_images=held_out.images if held_out is not None else None,
                            recall_labels=held_out.labels if held_out is not None else None)
    report["classifier_ckpt"] = str(classifier_ckpt)
    report["features"] = f"penultimate layer ({features.num_features} values) of the real-data classifier, central {features.image_size}x{features.image_size} crop"
    return report


def quality_scalars(report: dict) -> dict[str, float]:
    """The report's numbers as TensorBoard scalar names: quality/<class>/<key> and quality/mean_<key>."""
    scalars = {f"quality/{name}/{key}": value for name, scores in report["per_class"].items()
               for key, value in scores.items() if isinstance(value, float)}
    scalars.update({f"quality/{key}": value for key, value in report.items() if key.startswith(("mean_", "min_"))})
    return scalars
