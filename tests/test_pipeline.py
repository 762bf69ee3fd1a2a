"""The GAN -> generate -> classifier -> evaluate pipeline, its configs and the ablation table."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from PIL import Image

from fer import FERError
from fer.reports.ablation import markdown_table, read_runs
from fer.data.datamodule import FERDataModule

from conftest import REPO, compose_config, read_manifest, run_script, tiny_train_overrides


def tiny_pipeline_overrides(root) -> list[str]:
    return [
        f"data.root={root}",  # where the data is: one override for every stage, as on the other entries
        *(f"classifier.{o}" for o in tiny_train_overrides(root) if not o.startswith("data.root=")),
        "gan.data.batch_size=16", "gan.trainer.max_epochs=1", "gan.trainer.accelerator=cpu",
        "gan.trainer.enable_progress_bar=false", "gan.trainer.log_every_n_steps=1",
        "gan.model.generator.channels=[16,8,8]", "gan.model.discriminator.channels=[8,8,16]", "gan.model.generator.latent_dim=8",
        "classifier.data.balance=gan", "gan.ckpt_path=null", "generate.filter_min_conf=null",
        "generate.target_share=null", "generate.n_per_class={disgust:5,fear:3}", "generate.batch_size=4",
    ]


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_pipeline_end_to_end_on_synthetic_data(fer_folders, tmp_path):
    run = tmp_path / "run"
    run_script("pipeline.py", [*tiny_pipeline_overrides(fer_folders), f"hydra.run.dir={run}"], cwd=tmp_path)

    # the GAN trained and logged beside the classifier
    assert (run / "gan" / "checkpoints" / "last.ckpt").is_file() and (run / "gan" / "samples.png").is_file()
    assert list((run / "gan" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "classifier" / "tensorboard").glob("events.out.tfevents.*"))

    # the synthetic images: the asked-for counts, 48x48 grayscale, listed in the manifest
    synthetic = run / "synthetic"
    rows = read_manifest(synthetic / "manifest.csv")
    assert [r["class"] for r in rows] == ["disgust"] * 5 + ["fear"] * 3
    assert {p.parent.name for p in synthetic.rglob("*.png")} == {"disgust", "fear"} and len(list(synthetic.rglob("*.png"))) == 8
    for row in rows:
        with Image.open(synthetic / row["file"]) as image:
            assert image.mode == "L" and image.size == (48, 48)
    assert not list(fer_folders.rglob("*synthetic*")) and len(list(fer_folders.rglob("*.png"))) == 7 * 20  # dataset untouched

    # Training grew by exactly those images; PublicTest and PrivateTest did not
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["balance"] == "gan" and summary["synthetic"]["total"] == 8
    assert summary["train_images"] == 7 * 12 + 8
    assert summary["train_class_counts"]["disgust"] == 12 + 5 and summary["train_class_counts"]["fear"] == 12 + 3
    assert summary["val_images"] == 7 * 4
    assert summary["train_pflop"] == json.loads((run / "classifier" / "metrics.json").read_text())["train_pflop"] > 0
    assert summary["splits"]["val"]["n"] == summary["splits"]["test"]["n"] == 7 * 4
    assert summary["splits"]["test"]["source"] == "PrivateTest"
    assert (run / "evaluate" / "val" / "metrics.json").is_file() and (run / "evaluate" / "test" / "confusion_matrix.png").is_file()

    # the pipeline's classifier ships through the ship stage, and its card names the pipeline's command
    run_script("ship_model.py", [f"ckpt_path={summary['best_checkpoint']}", f"out_dir={tmp_path / 'assets'}",
                                 f"data.root={fer_folders}", "onnx.enabled=false", f"hydra.run.dir={tmp_path / 'ship'}"], cwd=tmp_path)
    training = json.loads((tmp_path / "assets" / "model_card.json").read_text())["training"]
    assert training["command"].startswith("python scripts/pipeline.py ") and "classifier.data.balance=gan" in training["command"]
    assert training["config"]["data"]["balance"] == "gan" and training["config"]["model"]["net"]["stages"] == [[8], [16]]

    # a second run into the same folder (reusing the GAN) is refused and leaves the first run's images as they were
    before = digest(synthetic)
    result = run_script("pipeline.py", [*tiny_pipeline_overrides(fer_folders), f"hydra.run.dir={run}",
                                        f"gan.ckpt_path={run / 'gan' / 'checkpoints' / 'last.ckpt'}"], cwd=tmp_path, check=False)
    assert result.returncode == 1 and "already holds generated images" in result.stderr.strip().splitlines()[-1]
    assert digest(synthetic) == before


def test_balance_gan_without_synthetic_folders_is_refused(fer_folders, tmp_path):
    with pytest.raises(FERError, match="data.balance=gan needs the generated folders in data.extra_train_dirs"):
        FERDataModule(root=str(fer_folders), cache_dir=str(tmp_path / "cache"), balance="gan")
    module = FERDataModule(root=str(fer_folders), cache_dir=str(tmp_path / "cache"), balance="gan",
                           extra_train_dirs=[str(fer_folders / "test")])
    module.setup("fit")
    assert len(module.splits["train"]) == 7 * 12 + 7 * 8 and len(module.splits["val"]) == 7 * 4
    assert module.class_weights is None


def test_the_pipeline_defaults_to_the_ablations_winner_and_draws_from_the_shipped_generator(tmp_path):
    from fer import ASSETS

    cfg = compose_config("pipeline", tmp_path)
    assert cfg.classifier.data.balance == "none" and cfg.gan.ckpt_path == str(ASSETS / "gan_generator.ckpt")
    assert (cfg.generate.target_share, cfg.generate.target_of, cfg.generate.filter_min_conf) == (0.5, "median", 0.6)


def test_pipeline_config_keeps_gan_and_classifier_subtrees_apart(tmp_path):
    cfg = compose_config("pipeline", tmp_path, ["classifier.model.optimizer.lr=0.01", "gan.model.lr=0.001",
                                                "classifier.data.balance=oversample", "gan.trainer.max_epochs=3"])
    assert cfg.classifier.model.optimizer.lr == 0.01 and cfg.classifier.model.scheduler.max_lr == 0.01
    assert cfg.gan.model.lr == 0.001 and cfg.gan.model.optimizer_g.lr == 0.001
    assert cfg.gan.model.optimizer_d.lr == cfg.gan.model.lr_d == 0.0004  # two time-scale: D's own rate
    assert cfg.gan.model.generator.conditioning == "batchnorm" and cfg.gan.model.diffaugment is not None
    assert cfg.gan.data.align == cfg.classifier.data.align  # the GAN draws the faces the classifier sees
    assert cfg.classifier.model._target_ == "fer.models.classifier.EmotionClassifier"
    assert cfg.gan.model._target_ == "fer.models.gan.ConditionalGAN"
    assert cfg.gan.trainer.max_epochs == 3 and cfg.gan.trainer.limit_val_batches == 0
    assert cfg.classifier.data.balance == "oversample" and cfg.gan.data.augment.erase == 0
    assert cfg.gan.data.balance == "oversample"  # the GAN sees every label equally often, whatever the classifier does

    from fer.training.pipeline import stage_config

    stage = stage_config(cfg, "gan", tmp_path / "run" / "gan", "gan")
    assert stage.callbacks.latest_checkpoint.dirpath == str(tmp_path / "run" / "gan" / "checkpoints")
    assert stage.logger.tensorboard.save_dir == str(tmp_path / "run" / "gan") and stage.seed == cfg.seed

    sweep = compose_config("pipeline", tmp_path, ["experiment=gan_ablation"])
    assert sweep.hydra.sweeper.params["classifier.data.balance"] == "none,class_weights,oversample,logit_adjust,gan"
    assert sweep.hydra.sweeper.params.seed == "1,2" and sweep.classifier.trainer.accelerator == "cpu"
    assert sweep.gan.ckpt_path.endswith("fer/assets/gan_generator.ckpt") and sweep.generate.target_of == "median"
    assert sweep.classifier.trainer.limit_train_batches == 224  # the same steps for every arm


def test_ablation_table_reads_a_sweep(tmp_path):
    def write(job: int, balance: str, accuracy: float, disgust: float, arm: str | None = None, seed: int | None = None):
        per_class = {name: {"recall": 0.5} for name in ("angry", "fear", "happy", "neutral", "sad", "surprise")}
        per_class["disgust"] = {"recall": disgust}
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({
            "balance": balance, "seed": job if seed is None else seed, **({"arm": arm} if arm else {}),
            "splits": {"val": {"accuracy": accuracy, "macro_f1": accuracy - 0.1, "per_class": per_class}, "test": None}}))

    write(0, "gan", 0.60, 0.2, "gan (0.5 x median)")
    write(1, "none", 0.62, 0.0)  # an older summary without "arm": its balance names the row
    write(2, "gan", 0.64, 0.4, "gan (0.5 x median)")
    write(3, "gan", 0.61, 0.5, "gan (0.5 x median) + filter 0.6")
    write(4, "logit_adjust", 0.63, 0.3, "logit_adjust")
    write(6, "none", 0.60, 0.0, seed=2)
    # a scripts/train.py run beside them: its arm is its recipe's overrides, with its compute and wall time
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "metrics.json").write_text(json.dumps({
        "val": {"val/acc": 0.66, "val/f1_macro": 0.6, **{f"val/recall_{name}": 0.5 for name in ("angry", "happy", "neutral", "sad", "surprise")},
                "val/recall_disgust": 0.25, "val/recall_fear": 0.4},
        "overrides": ["experiment=cpu_quick", "seed=3", "paths.cache_dir=/c", "data.root=/d", "trainer.max_epochs=27"],
        "train_pflop": 0.0779, "fit_seconds": 600.0, "epochs": 27, "seed": 3}))
    table = markdown_table(read_runs(tmp_path))
    lines = table.strip().splitlines()
    assert lines[0] == ("| arm | runs | accuracy (PublicTest) | macro-F1 (PublicTest) | balanced accuracy (PublicTest) | "
                        "disgust recall (PublicTest) | fear recall (PublicTest) | Δ accuracy vs none, paired by seed | "
                        "Δ macro-F1 vs none, paired by seed | training PFLOP | training wall (min) |")
    # the options' order, not the jobs'
    assert lines[2] == "| none | 2 | 0.6100 ± 0.0141 | 0.5100 ± 0.0141 | 0.4286 ± 0.0000 | 0.0000 ± 0.0000 | 0.5000 ± 0.0000 | – | – | – | – |"
    assert lines[3].startswith("| logit_adjust | 1 | 0.6300 |")
    # seeds 0 and 2, of which only seed 2 has a `none` run beside it: 0.64 - 0.60
    assert lines[4] == ("| gan (0.5 x median) | 2 | 0.6200 ± 0.0283 | 0.5200 ± 0.0283 | 0.4714 ± 0.0202 | 0.3000 ± 0.1414 | "
                        "0.5000 ± 0.0000 | +0.0400 | +0.0400 | – | – |")
    assert lines[5].startswith("| gan (0.5 x median) + filter 0.6 | 1 |")
    assert lines[6] == "| experiment=cpu_quick trainer.max_epochs=27 | 1 | 0.6600 | 0.6000 | 0.4500 | 0.2500 | 0.4000 | – | – | 0.078 | 10.0 |"
    with pytest.raises(FERError, match="no run in .* has test metrics"):
        read_runs(tmp_path, split="test")

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "ablation_table.py"), str(tmp_path)],
                            capture_output=True, text=True, check=True)
    assert result.stdout == table and (tmp_path / "ablation_val.md").read_text() == table

    # runs that also scored their best checkpoint with flip TTA get those columns, and a row for the
    # post-hoc prior correction of the same checkpoint where they have it
    flipped = tmp_path / "flipped"
    (flipped / "0").mkdir(parents=True)
    recall = {**{name: 0.5 for name in ("angry", "disgust", "happy", "neutral", "sad", "surprise")}, "fear": 0.45}
    prior = {"tau": 0.5, "accuracy": 0.65, "macro_f1": 0.63, "balanced_accuracy": 0.4929, "recall": recall}
    (flipped / "0" / "metrics.json").write_text(json.dumps({
        **json.loads((tmp_path / "5" / "metrics.json").read_text()), "val_flip": {"accuracy": 0.67, "macro_f1": 0.62}, "val_prior": prior}))
    header, _, row, corrected = markdown_table(read_runs(flipped)).strip().splitlines()
    assert "| fear recall (PublicTest) | accuracy, flip TTA (PublicTest) | macro-F1, flip TTA (PublicTest) | training PFLOP |" in header
    assert row == "| experiment=cpu_quick trainer.max_epochs=27 | 1 | 0.6600 | 0.6000 | 0.4500 | 0.2500 | 0.4000 | 0.6700 | 0.6200 | 0.078 | 10.0 |"
    assert corrected == ("| experiment=cpu_quick trainer.max_epochs=27 + prior correction (tau fitted on PublicTest) | 1 | 0.6500 | "
                         "0.6300 | 0.4929 | 0.5000 | 0.4500 | – | – | 0.078 | 10.0 |")
    # the post-hoc arm against its own run, paired by seed (--baseline names any arm)
    corrected = markdown_table(read_runs(flipped), baseline="experiment=cpu_quick trainer.max_epochs=27").strip().splitlines()[-1]
    assert corrected.endswith("| – | – | -0.0100 | +0.0300 | 0.078 | 10.0 |")

    # a pipeline run reads the same two from its classifier stage's summary beside it
    (flipped / "1" / "classifier").mkdir(parents=True)
    (flipped / "1" / "metrics.json").write_text((tmp_path / "1" / "metrics.json").read_text())
    (flipped / "1" / "classifier" / "metrics.json").write_text((flipped / "0" / "metrics.json").read_text())
    pipeline_rows = [line for line in markdown_table(read_runs(flipped)).splitlines() if line.startswith("| none")]
    assert pipeline_rows == [
        "| none | 1 | 0.6200 | 0.5200 | 0.4286 | 0.0000 | 0.5000 | 0.6700 | 0.6200 | – | – | – | – |",
        "| none + prior correction (tau fitted on PublicTest) | 1 | 0.6500 | 0.6300 | 0.4929 | 0.5000 | 0.4500 | – | – | "
        "+0.0300 | +0.1100 | – | – |"]


def test_class_weight_checkpoints_load_with_weights_only(fer_folders, tmp_path):
    import torch

    from fer.training.train import build

    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "data.balance=class_weights"])
    _, model, _ = build(cfg, logger=False, callbacks=[])
    assert type(model.hparams.class_weights) is list and len(model.hparams.class_weights) == 7
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.ckpt")
    assert torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]["class_weights"] == model.hparams.class_weights


def test_logit_adjusted_loss_adds_the_log_prior_to_the_logits_in_the_loss_only(fer_folders, tmp_path):
    import torch
    import torch.nn.functional as F

    from fer.training.train import build

    cfg = compose_config("train", tmp_path, [*tiny_train_overrides(fer_folders), "data.balance=logit_adjust"])
    datamodule, model, _ = build(cfg, logger=False, callbacks=[])
    counts = datamodule.splits["train"].class_counts().float()
    prior = (counts / counts.sum()).log()
    assert type(model.hparams.logit_adjustment) is list
    assert torch.allclose(model.logit_adjustment, prior) and model.class_weights is None
    logits, labels = torch.randn(5, 7), torch.tensor([0, 1, 2, 3, 4])
    smoothing = model.hparams.label_smoothing
    assert torch.allclose(model._loss(logits, labels), F.cross_entropy(logits + prior, labels, label_smoothing=smoothing))
    images = torch.rand(2, 1, 40, 40)
    assert torch.equal(model.eval()(images), model.net(model.standardize(images)))  # predictions: the bare logits
    plain = build(compose_config("train", tmp_path / "b", tiny_train_overrides(fer_folders)), logger=False, callbacks=[])[1]
    assert plain.logit_adjustment is None


def comparable(cfg, drop=("root", "cache_dir", "balance")) -> dict:
    """A config's raw (unresolved) values, less the keys the pipeline sets for every stage."""
    from omegaconf import OmegaConf

    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k not in drop}


@pytest.mark.parametrize("recipe", ["fast10", "fast30", "fast120", "fast_student"])
def test_a_train_recipe_composes_unchanged_under_the_pipelines_classifier(recipe, tmp_path):
    train = compose_config("train", tmp_path / "train", [f"experiment={recipe}"])
    pipeline = compose_config("pipeline", tmp_path / "pipeline", [f"+experiment@classifier={recipe}"])
    for key in ("data", "model", "trainer"):
        assert comparable(pipeline.classifier[key]) == comparable(train[key]), key
    assert pipeline.classifier.data.balance == train.data.balance == "none" and pipeline.classifier.data.root == pipeline.data.root


def test_the_imbalance_ablation_trains_every_arm_with_the_10_minute_recipe_for_the_same_steps(tmp_path):
    # it ran before fast10 took Muon, and keeps the AdamW that it measured
    train = compose_config("train", tmp_path / "train", ["experiment=fast10", "model.optimizer._target_=torch.optim.AdamW"])
    sweep = compose_config("pipeline", tmp_path / "pipeline", ["experiment=imbalance_ablation"])
    assert comparable(sweep.classifier.model) == comparable(train.model)
    assert comparable(sweep.classifier.data) == comparable(train.data)
    trainer = comparable(sweep.classifier.trainer)
    assert trainer.pop("limit_train_batches") == 225 and trainer.pop("enable_progress_bar") is False
    assert trainer == {k: v for k, v in comparable(train.trainer).items() if k != "enable_progress_bar"}
    assert sweep.hydra.sweeper.params["classifier.data.balance"] == "none,oversample,class_weights,logit_adjust,gan"
    assert sweep.hydra.sweeper.params.seed == "1,2,3" and list(sweep.evaluate.splits) == ["val"]
    assert (sweep.generate.target_share, sweep.generate.target_of, sweep.generate.filter_min_conf) == (0.5, "median", 0.6)
    assert sweep.gan.ckpt_path.endswith("fer/assets/gan_generator.ckpt")


@pytest.mark.parametrize("pipeline_experiment, train_experiment, epochs",
                         [("ship_student", "distilled_c", 70), ("pipeline_fast120", "fast120", 80)])
def test_a_pipeline_config_that_makes_a_model_to_ship_is_trains_recipe_for_the_same_steps(
        pipeline_experiment, train_experiment, epochs, tmp_path):
    train = compose_config("train", tmp_path / "train", [f"experiment={train_experiment}"])
    ship = compose_config("pipeline", tmp_path / "pipeline", [f"experiment={pipeline_experiment}"])
    assert comparable(ship.classifier.model) == comparable(train.model)
    trainer = comparable(ship.classifier.trainer)
    assert trainer.pop("limit_train_batches") == 225 and trainer.pop("enable_progress_bar") is False
    assert trainer == {k: v for k, v in comparable(train.trainer).items() if k != "enable_progress_bar"} and trainer["max_epochs"] == epochs
    assert ship.classifier.data.balance == "none" and list(ship.evaluate.splits) == ["val"]


def test_the_shipped_student_learns_from_the_shipped_teachers_one_view(tmp_path):
    ship = compose_config("pipeline", tmp_path, ["experiment=ship_student"])
    assert not ship.classifier.model.distill.get("flip", False) and ship.classifier.model.distill.teachers[0].endswith("fer/assets/teacher/emotion_classifier.ckpt")


def test_the_pipeline_config_that_ships_the_model_runs_end_to_end_at_a_tiny_budget(fer_folders, tmp_path):
    cfg = compose_config("pipeline", tmp_path, ["experiment=ship_fast120"])
    # the teacher's recipe of 4 Dec (net B, AdamW, no mixup), pinned where experiment=fast120 has moved on
    assert cfg.classifier.trainer.max_epochs == 150 and cfg.classifier.model.net.stages[-1] == [192]
    assert cfg.classifier.model.optimizer._target_ == "torch.optim.AdamW" and cfg.classifier.model.mixup_alpha == 0
    assert cfg.classifier.trainer.limit_train_batches == 225  # the recipe's steps, synthetic faces or not
    assert cfg.classifier.data.balance == "none" and cfg.gan.ckpt_path.endswith("fer/assets/gan_generator.ckpt")

    # the shipped model's command (its card's), which drew synthetic faces from the shipped generator
    run = tmp_path / "run"
    tiny = [o for o in tiny_pipeline_overrides(fer_folders) if not o.startswith(("gan.", "classifier.data.balance"))]
    run_script("pipeline.py", ["experiment=ship_fast120", "classifier.data.balance=gan", *tiny, f"hydra.run.dir={run}"], cwd=tmp_path)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["balance"] == "gan" and summary["synthetic"]["total"] == 8  # drawn from the shipped generator
    assert list(summary["splits"]) == ["val"] and summary["splits"]["val"]["n"] == 7 * 4
    assert not (run / "gan").exists()
