"""The paths that only a GPU runs: bf16 (`trainer=gpu`), data on a CUDA device, `model.compile`, DDP
over several GPUs, and the two GPU recipes, each for a batch or two. Marked `gpu`: they skip without
CUDA, and scripts/gpu_check.sh runs them first on a GPU machine (`pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, tiny_train_overrides

from fer.training.train import train
from fer.training.train_gan import train_gan

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

ON_GPU = ["trainer.accelerator=gpu", "trainer.devices=1"]


def gpu_train(tmp_path, root, *overrides: str) -> dict:
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(root), *ON_GPU, "trainer.max_epochs=2", *overrides])
    return train(cfg)


def test_bf16_training_with_data_on_the_gpu(fer_folders, tmp_path):
    metrics = gpu_train(tmp_path, fer_folders, "trainer=gpu", "data.on_device=true")
    assert 0 <= metrics["val/acc"] <= 1
    checkpoint = torch.load(next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt")), weights_only=True)
    assert all(v.dtype == torch.float32 for v in checkpoint["state_dict"].values() if v.is_floating_point())  # bf16-mixed keeps fp32 weights


def test_compiled_training_keeps_plain_checkpoint_names(fer_folders, tmp_path):
    gpu_train(tmp_path, fer_folders, "trainer=gpu", "model.compile=true")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if "_orig_mod" in k]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP needs two GPUs")
def test_ddp_spawn_on_two_gpus(fer_folders, tmp_path):
    assert 0 <= gpu_train(tmp_path, fer_folders, "trainer=ddp", "trainer.devices=2")["val/acc"] <= 1


def test_the_gpu_classifier_recipe_runs_a_batch(fer_folders, tmp_path):
    cfg = compose_config("train", tmp_path, [f"data.root={fer_folders}", "experiment=fer2013_best", "debug=fast_dev_run",
                                             "trainer.accelerator=gpu", "data.batch_size=16"])
    assert 0 <= train(cfg)["val/acc"] <= 1


def test_the_gpu_gan_recipe_runs_a_batch(fer_folders, tmp_path):
    cfg = compose_config("train_gan", tmp_path, [f"data.root={fer_folders}", "experiment=gan_gpu", "data.batch_size=16",
                                                 "data.align=false", "trainer.max_epochs=1",
                                                 "+trainer.limit_train_batches=2", "quality.classifier_ckpt=null"])
    result = train_gan(cfg)
    assert torch.load(result["ckpt_path"], weights_only=True)["global_step"] == 4  # 2 optimizer steps a batch
