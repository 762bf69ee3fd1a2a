"""Smoke tests on the real FER-2013 (skipped where it is absent, e.g. on a user's machine)."""

from __future__ import annotations

import pytest
import torch

from fer.data.fer2013 import load_split
from fer.training.train import train

from conftest import REAL_COUNTS, compose_config


def test_real_splits_have_the_published_counts(real_fer2013, tmp_path):
    for name, counts in REAL_COUNTS.items():
        split = load_split(real_fer2013, name, tmp_path / "cache")
        assert split.class_counts().tolist() == counts
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (48, 48)
        assert 0.3 < split.images.float().mean() / 255 < 0.7  # real faces, not blank decodes


@pytest.mark.slow  # the longest real-data run; the synthetic training tests cover the same path
def test_a_short_real_run_scores_all_of_public_test(real_fer2013, tmp_path):
    cfg = compose_config("train", tmp_path, [
        f"data.root={real_fer2013}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.accelerator=cpu",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=10", "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false",
    ])
    metrics = train(cfg)
    assert 0 < metrics["val/acc"] < 1 and set(metrics) >= {f"val/recall_{c}" for c in ("disgust", "fear")}
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
