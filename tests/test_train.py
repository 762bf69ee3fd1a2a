"""Training and evaluation through the Hydra entries, on small synthetic data."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fer import FERError
from fer.training.train import train

from conftest import compose_config, run_script, tiny_train_overrides, write_folders


def test_fast_dev_run(fer_folders, tmp_path):
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "debug=fast_dev_run"])
    metrics = train(cfg)
    assert 0 <= metrics["val/acc"] <= 1 and "val/recall_disgust" in metrics


def test_a_model_learns(tmp_path):
    root = write_folders(tmp_path / "fer", {"Training": 40, "PublicTest": 10})
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(root), "trainer.max_epochs=8", "model.optimizer.lr=0.01"])
    metrics = train(cfg)
    assert metrics["val/acc"] >= 0.5, metrics  # chance is 1/7; this run reaches ~0.7


def test_train_then_evaluate_through_the_entries(fer_folders, tmp_path):
    run = tmp_path / "run"
    run_script("train.py", [*tiny_train_overrides(fer_folders), f"hydra.run.dir={run}"], cwd=tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1
    assert (run / "curves.png").stat().st_size > 0 and (run / ".hydra" / "config.yaml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard")).Reload()  # the confusion-matrix callback's figure
    assert "val/confusion_matrix" in events.Tags()["images"]

    result = run_script("evaluate.py", [f"ckpt_path={last}", "split=test", f"data.root={fer_folders}",
                                        f"hydra.run.dir={tmp_path / 'eval'}", "trainer.accelerator=cpu"], cwd=tmp_path)
    last_line = result.stdout.strip().splitlines()[-1]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert last_line == f"accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} n=28"
    assert metrics["n"] == 28 and metrics["source"] == "PrivateTest"
    assert sum(map(sum, metrics["confusion_matrix"])) == 28 and set(metrics["per_class"]) >= {"disgust", "fear"}
    for name in ("classification_report.txt", "confusion_matrix.png", "predictions.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0


def test_a_killed_run_resumes_from_its_checkpoint(fer_folders, tmp_path):
    steps_per_epoch = 7 * 12 // 8
    args = [*tiny_train_overrides(fer_folders), "trainer.max_epochs=2", "callbacks.best_checkpoint.save_top_k=-1"]
    run_script("train.py", [*args, f"hydra.run.dir={tmp_path / 'full'}"], cwd=tmp_path)
    after_first_epoch = tmp_path / "full" / "checkpoints" / "epoch_000.ckpt"  # as if killed here

    run_script("train.py", [*args, f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={after_first_epoch}"], cwd=tmp_path)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 1
    assert resumed["global_step"] == full["global_step"] == 2 * steps_per_epoch
    assert not (tmp_path / "resumed" / "checkpoints" / "epoch_000.ckpt").exists()  # epoch 0 was not trained again
    assert resumed["lr_schedulers"][0]["last_epoch"] == full["lr_schedulers"][0]["last_epoch"]


def test_last_checkpoint_is_written_every_epoch(fer_folders, tmp_path):
    # the best checkpoint is only considered every 2nd epoch here, yet last.ckpt follows every epoch
    run = tmp_path / "run"
    run_script("train.py", [*tiny_train_overrides(fer_folders), "trainer.max_epochs=3", f"hydra.run.dir={run}",
                            "+callbacks.best_checkpoint.every_n_epochs=2"], cwd=tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert [p.name for p in (run / "checkpoints").glob("epoch_*.ckpt")] == ["epoch_001.ckpt"]


def test_a_sweep_gets_one_folder_per_job(fer_folders, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", *tiny_train_overrides(fer_folders), "seed=1,2", "+trainer.limit_train_batches=1",
                            f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / "tensorboard").is_dir()


def test_bad_input_gets_one_clear_line(fer_folders, tmp_path):
    cases = [
        (["data.bogus=1"], "Key 'bogus' is not in struct"),
        (["data.balance=smote"], "error: data.balance must be one of"),
        ([f"data.root={tmp_path / 'nowhere'}"], "error: no FER-2013 found at"),
    ]
    for args, message in cases:
        result = run_script("train.py", args, cwd=tmp_path, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]

    not_a_model = tmp_path / "model.ckpt"
    not_a_model.write_bytes(b"garbage")
    result = run_script("evaluate.py", [f"ckpt_path={not_a_model}", f"data.root={fer_folders}"], cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(f"error: {not_a_model} is not a loadable checkpoint")


def test_an_optuna_search_runs_its_trials(fer_folders, tmp_path):
    sweep = tmp_path / "search"
    result = run_script("train.py", ["-m", "hparams_search=optuna", *tiny_train_overrides(fer_folders),
                                     "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                                     "+trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert (sweep / "optimization_results.yaml").is_file()
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert "Best parameters" in result.stdout + result.stderr


def test_training_with_mixup_cutmix_and_on_device_data(fer_folders, tmp_path):
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "trainer.max_epochs=2", "data.on_device=true",
                                             "model.mixup_alpha=0.2", "model.cutmix_alpha=1.0"])
    metrics = train(cfg)
    assert 0 <= metrics["val/acc"] <= 1 and "val/f1_macro" in metrics


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `slurm` extra is not installed")
    cfg = compose_config("train", tmp_path, ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=fer2013_best"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == launcher.tasks_per_node == cfg.trainer.devices == 1


def test_plain_ddp_is_refused_inside_a_local_sweep(fer_folders, tmp_path):
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "trainer=ddp", "trainer.strategy=ddp",
                                             "hydra.mode=MULTIRUN"])
    with pytest.raises(FERError, match="trainer.strategy=ddp .* -m sweep"):
        train(cfg)


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path):
    # 2 gloo processes through the Hydra entry (trainer=ddp is ddp_spawn), each with its half of the batches
    root = write_folders(tmp_path / "fer", {"Training": 8, "PublicTest": 4})
    run = tmp_path / "run"
    result = run_script("train.py", [*tiny_train_overrides(root), "trainer=ddp", "trainer.accelerator=cpu",
                                     "trainer.precision=32-true", "trainer.devices=2", f"hydra.run.dir={run}"], cwd=tmp_path)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 7 * 8 // (2 * 8)  # 56 images, batches of 8, shared by 2 processes
    assert "PublicTest (val) of the best checkpoint" in result.stderr + result.stdout
    assert "'val/acc'" in result.stderr + result.stdout
    assert sorted(p.name for p in tmp_path.glob("**/.hydra")) == [".hydra"]  # one run folder, not one per process
