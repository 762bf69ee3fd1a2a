"""Training and evaluation through the Hydra entries, on small synthetic data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config, run_script, tiny_train_overrides, write_folders
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fer import EMOTIONS, FERError
from fer.training.train import train


def test_fast_dev_run(fer_folders, tmp_path):
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "debug=fast_dev_run"])
    metrics = train(cfg)
    assert 0 <= metrics["val/acc"] <= 1 and "val/recall_disgust" in metrics


def test_a_run_without_validation_batches_is_refused_before_it_trains(fer_folders, tmp_path):
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "+trainer.limit_val_batches=0"])
    with pytest.raises(FERError, match=re.escape("trainer.limit_val_batches=0: a classifier run selects and scores")):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_model_learns(tmp_path):
    root = write_folders(tmp_path / "fer", {"Training": 40, "PublicTest": 10})
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(root), "trainer.max_epochs=8", "model.optimizer.lr=0.01"])
    metrics = train(cfg)
    assert metrics["val/acc"] >= 0.5, metrics  # chance is 1/7; this run reaches ~0.7


def test_a_run_projects_its_time_and_records_its_compute(tmp_path, caplog):
    root = write_folders(tmp_path / "fer", {"Training": 8, "PublicTest": 2})  # 56 faces: 7 batches of 8
    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(root), "trainer.max_epochs=3", "callbacks.run_eta.probe_steps=5"])
    with caplog.at_level("INFO", logger="fer.training.callbacks"):
        metrics = train(cfg)
    (projection,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("measured over")]
    assert re.fullmatch(r"measured over the first 5 batches: \d\.\d{3} s a batch, so the run has about \d:\d\d:\d\d to go "
                        r"\(ETA \d\d:\d\d\) \(3 of 3 epochs left, 7 batches each, \d:\d\d:\d\d of validation each\)", projection), projection
    assert len([r for r in caplog.records if re.match(r"epoch \d/3 done: .* elapsed, about .* to go", r.getMessage())]) == 3

    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["val"] == metrics and summary["epochs"] == 3 and summary["seed"] == 42 and summary["fit_seconds"] > 0
    # 21 batches of 8 faces at 48 px through [[8],[16]] (16): 2x-3x the forward FLOP (see test_bench)
    forward = 8 * 2 * (48 * 48 * 9 * 8 + 24 * 24 * 9 * 8 * 16 + 16 * 16 + 16 * 7)
    assert 21 * 2 * forward < summary["train_pflop"] * 1e15 < 21 * 3 * forward


def test_progressive_resizing_trains_early_epochs_at_fewer_pixels_and_counts_their_flop(tmp_path):
    root = write_folders(tmp_path / "fer", {"Training": 8, "PublicTest": 2})

    def pflop(tag: str, *extra: str) -> float:
        train(compose_config("train", tmp_path / tag, [*tiny_train_overrides(root), "trainer.max_epochs=2", *extra]))
        return json.loads((tmp_path / tag / "run" / "metrics.json").read_text())["train_pflop"]

    full = pflop("full")
    resized = pflop("resized", "+callbacks.progressive_resize._target_=fer.training.callbacks.ProgressiveResize",
                    "+callbacks.progressive_resize.schedule={0:24,1:48}")
    assert resized == pytest.approx(full * (24**2 / 48**2 + 1) / 2, rel=0.02)  # epoch 1 at a quarter of the pixels

    from fer.training.callbacks import ProgressiveResize

    with pytest.raises(FERError, match="must start at epoch 0"):
        ProgressiveResize({5: 32})


def test_patch_whitening_makes_the_first_conv_output_white_and_a_resumed_run_keeps_its_weights(fer_folders, tmp_path):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from fer.training.callbacks import PatchWhitening

    cfg = compose_config("train", tmp_path, tiny_train_overrides(fer_folders))
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    conv = model.net.features[0][0]  # 8 filters: the 4 patch directions of most variance, each with its negative

    resumed = conv.weight.detach().clone()
    PatchWhitening().on_fit_start(SimpleNamespace(ckpt_path="last.ckpt", datamodule=datamodule), model)
    assert torch.equal(conv.weight, resumed)

    PatchWhitening(eps=0.0).on_fit_start(SimpleNamespace(ckpt_path=None, datamodule=datamodule), model)
    faces = model.standardize(datamodule.eval_transform(datamodule.splits["train"].images))
    with torch.no_grad():
        outputs = torch.nn.functional.conv2d(faces, conv.weight)  # the interior pixels: no padding
    channels = outputs.transpose(0, 1).flatten(1)
    assert torch.allclose(torch.cov(channels[0::2]), torch.eye(4), atol=5e-3)  # whitened
    assert torch.allclose(channels[1::2], -channels[0::2])  # the negatives
    before = torch.cov(torch.nn.functional.conv2d(faces, resumed).transpose(0, 1).flatten(1))
    assert not torch.allclose(before, torch.eye(8), atol=0.1)  # a random init is not


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
                                        f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    last_line = result.stdout.strip().splitlines()[-1]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert last_line == f"accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} n=28"
    assert metrics["n"] == 28 and metrics["source"] == "PrivateTest"
    assert sum(map(sum, metrics["confusion_matrix"])) == 28 and set(metrics["per_class"]) >= {"disgust", "fear"}
    for name in ("classification_report.txt", "confusion_matrix.png", "predictions.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0

    # the run's own flip-TTA figures (for ladders of recipes) are what evaluate computes for its best checkpoint
    run_script("evaluate.py", [f"ckpt_path={last}", "split=val", "tta=flip", "adjust=false", f"data.root={fer_folders}",
                               f"hydra.run.dir={tmp_path / 'eval_flip'}"], cwd=tmp_path)
    flip = json.loads((tmp_path / "eval_flip" / "metrics.json").read_text())
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["val_flip"] == pytest.approx({"accuracy": flip["accuracy"], "macro_f1": flip["macro_f1"]})
    # and its post-hoc arm: the tau that the ship stage fits for one view, and its figures
    run_script("ship_model.py", [f"ckpt_path={last}", f"out_dir={tmp_path / 'shipped'}", f"data.root={fer_folders}", "tta=none",
                                 "adjustment.method=prior", "onnx.enabled=false", "training.commit=abc1234", "training.machine=test",
                                 f"hydra.run.dir={tmp_path / 'ship'}"], cwd=tmp_path)
    card = json.loads((tmp_path / "shipped" / "model_card.json").read_text())
    prior = summary["val_prior"]
    assert prior["tau"] == card["adjustment"]["tau"]
    assert set(prior["recall"]) == set(EMOTIONS) and prior["balanced_accuracy"] == pytest.approx(
        sum(prior["recall"].values()) / 7, abs=1e-3)


def test_a_killed_run_resumes_from_its_checkpoint(fer_folders, tmp_path):
    steps_per_epoch = 7 * 12 // 8
    # progressive resizing: epoch 0 at 24 px, epoch 1 at 48; the resumed run must train its epoch 1 at 48 too;
    # Muon's momentum buffers go in the checkpoint beside AdamW's moments
    args = [*tiny_train_overrides(fer_folders), "trainer.max_epochs=2", "callbacks.best_checkpoint.save_top_k=-1",
            "+callbacks.progressive_resize._target_=fer.training.callbacks.ProgressiveResize",
            "+callbacks.progressive_resize.schedule={0:24,1:48}", "model.optimizer._target_=fer.models.optim.MuonAdamW"]
    run_script("train.py", [*args, f"hydra.run.dir={tmp_path / 'full'}"], cwd=tmp_path)
    after_first_epoch = tmp_path / "full" / "checkpoints" / "epoch_000.ckpt"  # as if killed here

    run_script("train.py", [*args, f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={after_first_epoch}"], cwd=tmp_path)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 1
    assert resumed["global_step"] == full["global_step"] == 2 * steps_per_epoch
    assert not (tmp_path / "resumed" / "checkpoints" / "epoch_000.ckpt").exists()  # epoch 0 was not trained again
    assert resumed["lr_schedulers"][0]["last_epoch"] == full["lr_schedulers"][0]["last_epoch"]
    states = [checkpoint["optimizer_states"][0]["state"].values() for checkpoint in (resumed, full)]
    assert [sum("momentum_buffer" in state for state in run) for run in states] == [2, 2]  # the hidden conv and dense layer
    assert [sum("exp_avg" in state for state in run) for run in states] == [8, 8]
    pflop = [json.loads((tmp_path / run / "metrics.json").read_text())["train_pflop"] for run in ("full", "resumed")]
    assert pflop[0] == pytest.approx(pflop[1]) and pflop[0] > 0  # the compute of both epochs, the first one's carried over


@pytest.mark.parametrize("experiment", ["cpu_quick", "fast10", "fast30", "fast120"])
def test_the_cpu_recipes_compose_and_run_a_batch(fer_folders, tmp_path, experiment):
    cfg = compose_config("train", tmp_path, [f"data.root={fer_folders}", f"experiment={experiment}", "debug=fast_dev_run",
                                             "data.align=false", "data.batch_size=16", f"paths.cache_dir={tmp_path / 'cache'}"])
    assert 0 <= train(cfg)["val/acc"] <= 1


def test_decoupled_retraining_runs_on_top_of_a_trained_run_and_its_checkpoint_stands_alone(fer_folders, tmp_path):
    from fer.models.classifier import load_classifier

    base_cfg = compose_config("train", tmp_path / "base", tiny_train_overrides(fer_folders))
    train(base_cfg)
    trained = json.loads((tmp_path / "base" / "run" / "metrics.json").read_text())["best_checkpoint"]
    # with the base recipe's patch whitening repeated: it must not re-initialise the trained first conv
    cfg = compose_config("train", tmp_path / "crt", ["experiment=decoupled", *tiny_train_overrides(fer_folders),
                                                     "trainer.max_epochs=2", f"model.init_from={trained}",
                                                     "+callbacks.patch_whitening._target_=fer.training.callbacks.PatchWhitening"])
    train(cfg)
    retrained = json.loads((tmp_path / "crt" / "run" / "metrics.json").read_text())["best_checkpoint"]
    before = load_classifier(trained)[0].state_dict()
    Path(trained).unlink()  # the re-trained checkpoint loads without the run it started from
    model, checkpoint = load_classifier(retrained)
    assert checkpoint["datamodule_hyper_parameters"]["balance"] == "oversample"
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"net.head.6.weight", "net.head.6.bias"}


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_with_ckpt_path_last(fer_folders, tmp_path):
    epochs, steps_per_epoch = 12, 7 * 12 // 8
    args = [*tiny_train_overrides(fer_folders), f"trainer.max_epochs={epochs}"]
    runs = tmp_path / "logs" / "train" / "runs"
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # into a later epoch
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    (killed,) = runs.iterdir()
    killed_at = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert killed_at < epochs - 1, "the run finished before it was killed"
    written = {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()}

    run_script("train.py", [*args, "ckpt_path=last"], cwd=tmp_path)
    (resumed,) = set(runs.iterdir()) - {killed}
    assert {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()} == written  # the killed run is untouched
    last = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    schedule = last["lr_schedulers"][0]
    assert last["epoch"] == epochs - 1 and last["global_step"] == epochs * steps_per_epoch
    assert schedule["total_steps"] == schedule["last_epoch"] == epochs * steps_per_epoch  # one-cycle ran to its end
    assert f"resuming {killed / 'checkpoints' / 'last.ckpt'}" in (resumed / "train.log").read_text()


def test_lightning_noise_is_silenced_and_real_warnings_still_show(fer_folders, tmp_path):
    args = [o for o in tiny_train_overrides(fer_folders) if not o.startswith("trainer.log_every_n_steps")]
    result = run_script("train.py", [*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    for noise in ("💡 Tip", "litlogger", "TPU available", "isinstance(treespec, LeafSpec)"):
        assert noise not in output
    assert "smaller than the logging interval" in output  # a real warning about this run's settings


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
        (["data.balance=smote"], "error: data.balance='smote': expected one of [none, class_weights, oversample, logit_adjust, gan]"),
        ([f"data.root={tmp_path / 'nowhere'}"], "error: no FER-2013 found at"),
    ]
    for args, message in cases:
        result = run_script("train.py", args, cwd=tmp_path, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]

    not_a_model = tmp_path / "model.ckpt"
    not_a_model.write_bytes(b"garbage")
    result = run_script("evaluate.py", [f"ckpt_path={not_a_model}", f"data.root={fer_folders}"], cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == \
        f"error: {not_a_model} is not a checkpoint of this project (not a file written by torch.save)"


@pytest.mark.parametrize(("script", "override", "line"), [
    ("train.py", "model.optimizer.lr=abc", "error: model.optimizer.lr='abc': expected a number"),
    ("train.py", "data.batch_size=-5", "error: data.batch_size=-5: expected a positive number"),
    ("pipeline.py", "classifier.trainer.max_epochs=0", "error: classifier.trainer.max_epochs=0: expected a number of epochs"),
    ("evaluate.py", "tta=sideways", "error: tta='sideways': expected one of [default, none, flip, tencrop]"),
    ("train.py", "model.net.stages=abc", "error: model.net.stages='abc': expected a list of stages, each a non-empty list"),
])
def test_a_bad_config_value_is_one_line_and_exit_code_2(fer_folders, tmp_path, script, override, line):
    args = [f"data.root={fer_folders}", override] + (["ckpt_path=any.ckpt"] if script == "evaluate.py" else [])
    result = run_script(script, args, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().startswith(line) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "data" / "cache").exists()  # refused before any work


@pytest.mark.parametrize(("name", "override", "message"), [
    ("train", "data.augment.flip=2", "data.augment.flip=2: expected a number in [0, 1]"),
    ("train", "data.image_size=64", "data.image_size=64: expected a crop size in pixels, 8 to 48"),
    ("train", "model.net.dropout=1.0", "model.net.dropout=1.0: expected a probability in [0, 1)"),
    ("train", "data.align=maybe", "data.align='maybe': expected true or false"),
    ("train_gan", "model.lr=-1", "model.lr=-1: expected a positive number"),
    ("ship_model", "adjustment.max_accuracy_drop=2", "adjustment.max_accuracy_drop=2: expected a number in [0, 1]"),
    ("ship_model", "onnx.float_leading_convs=[1,-1]", "onnx.float_leading_convs=[1, -1]: expected a non-empty list of counts >= 0"),
    ("ship_model", "onnx.calibration_percentiles=[99.9,40]", "onnx.calibration_percentiles=[99.9, 40]: expected a non-empty list of percentiles"),
    ("bench_predict", "batch_size=0", "batch_size=0: expected a positive number"),
    ("generate", "generate.batch_size=x", "generate.batch_size='x': expected an integer"),
    ("train", "model.net.stages=[16,32]", "model.net.stages=[16, 32]: expected a list of stages"),
    ("train", "model.net.stages=[[16,x]]", "model.net.stages=[[16, 'x']]: expected a list of stages"),
    ("train", "model.net.stages=[[16],[]]", "model.net.stages=[[16], []]: expected a list of stages"),
    ("train", "model.net.dense=wide", "model.net.dense='wide': expected an integer"),
    ("train", "model.distill={teachers:[a.ckpt],weight:2,temperature:1}", "model.distill.weight=2: expected a number in [0, 1]"),
    ("train", "model.distill={teachers:[a.ckpt],weight:0.5,temperature:0}", "model.distill.temperature=0: expected a positive number"),
    ("train", "model.retrain_last_layer=sometimes", "model.retrain_last_layer='sometimes': expected true or false"),
    ("judge_generator", "quality.n_per_class=1", "quality.n_per_class=1: expected at least 2 faces per class"),
    ("train_gan", "model.generator.channels=[96,48]", "model.generator.channels=[96, 48]: expected three positive channel widths"),
    ("train_gan", "model.discriminator.channels=[48,-1]", "model.discriminator.channels=[48, -1]: expected a non-empty list"),
    ("train_gan", "model.generator.latent_dim=big", "model.generator.latent_dim='big': expected an integer"),
])
def test_schemas_name_the_key_the_value_and_what_is_expected(tmp_path, name, override, message):
    from fer import schema

    schemas = {"train": schema.Train, "train_gan": schema.TrainGan, "ship_model": schema.Ship,
               "bench_predict": schema.BenchPredict, "generate": schema.Generate, "judge_generator": schema.JudgeGenerator}
    cfg = compose_config(name, tmp_path, [override] + (["gan_ckpt=g.ckpt"] if name == "generate" else []))
    with pytest.raises(FERError, match=re.escape(message)):
        schema.validate(cfg, schemas[name])


@pytest.mark.parametrize("name", ["train", "train_gan", "pipeline", "evaluate", "visualize", "ship_model", "generate",
                                  "bench_train", "bench_predict", "load_serve", "compare_fer_package"])
def test_every_entry_takes_the_same_data_overrides_and_its_defaults_pass_its_schema(tmp_path, name):
    from fer import schema

    schemas = {"train": schema.Train, "train_gan": schema.TrainGan, "pipeline": schema.Pipeline, "evaluate": schema.Evaluate,
               "visualize": schema.Visualize, "ship_model": schema.Ship, "generate": schema.Generate,
               "bench_train": schema.BenchTrain, "bench_predict": schema.BenchPredict, "load_serve": schema.LoadServe,
               "compare_fer_package": schema.CompareFerPackage}
    required = {"evaluate": ["ckpt_path=a.ckpt"], "ship_model": ["ckpt_path=a.ckpt"], "generate": ["gan_ckpt=g.ckpt"],
                "compare_fer_package": ["tflite_model=m.tflite"]}
    cfg = compose_config(name, tmp_path, ["data.root=/somewhere/fer", "data.cache_dir=/somewhere/cache",
                                          *required.get(name, [])])
    schema.validate(cfg, schemas[name])
    assert cfg.data.root == "/somewhere/fer" and cfg.data.cache_dir == "/somewhere/cache"
    if name == "pipeline":
        assert cfg.classifier.data.root == cfg.gan.data.root == "/somewhere/fer"


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
