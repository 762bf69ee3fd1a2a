"""The conditional DCGAN: nets, LightningModule, quality metrics and the generation stage."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fer import EMOTIONS, FERError
from fer.reports.gan_quality import ClassifierFeatures, distances, embed, quality_report
from fer.training.generate import generate, load_gan, plan_counts
from fer.models.classifier import EmotionClassifier
from fer.models.gan import ConditionalGAN
from fer.models.gan_nets import Discriminator, Generator
from fer.training.train_gan import train_gan

from conftest import compose_config, write_folders

TINY_GAN = ["data.batch_size=16", "model.generator.channels=[16,8,8]", "model.discriminator.channels=[8,8,16]",
            "model.generator.latent_dim=8", "model.generator.embed_dim=4",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def tiny_gan(**options) -> ConditionalGAN:
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-4}
    return ConditionalGAN(
        generator={"_target_": "fer.models.gan_nets.Generator", "latent_dim": 8, "embed_dim": 4, "channels": [16, 8, 8]},
        discriminator={"_target_": "fer.models.gan_nets.Discriminator", "channels": [8, 8, 16],
                       **options.pop("discriminator", {})},
        optimizer_g=adam, optimizer_d=adam, **options)


def tiny_classifier() -> EmotionClassifier:
    return EmotionClassifier(net={"_target_": "fer.models.nets.ConvNet", "stages": [[8], [16]], "dense": 16},
                             optimizer={"_target_": "torch.optim.AdamW", "_partial_": True}).eval()


@pytest.mark.parametrize("conditioning", ["projection", "auxiliary"])
@pytest.mark.parametrize("spectral_norm", [True, False])
def test_generator_and_discriminator_shapes_for_each_class(conditioning, spectral_norm):
    g = Generator(latent_dim=16, channels=(32, 16, 8))
    d = Discriminator(channels=(8, 16, 32), conditioning=conditioning, spectral_norm=spectral_norm)
    for label in range(len(EMOTIONS)):
        labels = torch.full((3,), label)
        images = g(torch.randn(3, 16), labels)
        assert images.shape == (3, 1, 48, 48) and images.min() >= -1 and images.max() <= 1
        logits, classes = d(images, labels)
        assert logits.shape == (3,)
        assert (classes is None) == (conditioning == "projection")
        if classes is not None:
            assert classes.shape == (3, len(EMOTIONS))
    # the label changes the output: the model is class-conditional
    z = torch.randn(1, 16)
    assert not torch.allclose(g.eval()(z, torch.tensor([0])), g(z, torch.tensor([1])))
    if conditioning == "projection":
        x = torch.rand(1, 1, 48, 48)
        assert not torch.allclose(d(x, torch.tensor([0]))[0], d(x, torch.tensor([1]))[0])


@pytest.mark.parametrize("loss", ["hinge", "bce"])
def test_one_manual_step_updates_both_nets_and_the_ema(loss, tmp_path):
    import lightning as L

    gan = tiny_gan(loss=loss, label_smoothing=0.1 if loss == "bce" else 0.0, ema_decay=0.9, clip_grad_norm=1.0)
    g0 = [p.detach().clone() for p in gan.generator.parameters()]
    d0 = [p.detach().clone() for p in gan.discriminator.parameters()]
    e0 = [p.detach().clone() for p in gan.ema.module.parameters()]
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 1, 48, 48), torch.arange(8) % 7), batch_size=8)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(gan, data)
    assert trainer.global_step == 2  # one discriminator and one generator step
    assert any(not torch.equal(a, b) for a, b in zip(g0, gan.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, gan.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(e0, gan.ema.module.parameters()))
    assert all(p.requires_grad for p in gan.generator.parameters()) and all(p.requires_grad for p in gan.discriminator.parameters())
    samples = gan.sample(torch.randn(4, 8), torch.arange(4))
    assert samples.shape == (4, 1, 48, 48) and 0 <= samples.min() and samples.max() <= 1


def test_bad_gan_options_are_refused():
    with pytest.raises(FERError, match="model.loss must be one of"):
        tiny_gan(loss="wasserstein")
    with pytest.raises(FERError, match="model.discriminator: conditioning must be one of"):
        tiny_gan(discriminator={"conditioning": "concat"})
    with pytest.raises(FERError, match="model.ema_decay"):
        tiny_gan(ema_decay=1.5)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    features = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    same = distances(features, features.clone(), kid_subsets=20, kid_subset_size=100)
    assert abs(same["fid"]) < 1e-6
    assert abs(same["kid_mean"]) < 0.1
    shifted = distances(features, features + 1.0, kid_subsets=20, kid_subset_size=100)
    assert shifted["fid"] == pytest.approx(16.0, rel=1e-4)  # ||mean shift||^2 = 16 x 1^2, same covariance
    assert shifted["kid_mean"] > 10 * abs(same["kid_mean"])


def test_quality_report_on_known_inputs():
    torch.manual_seed(0)
    classifier = tiny_classifier()
    features = ClassifierFeatures(classifier, image_size=40)
    assert features.num_features == 16 and embed(features, torch.rand(5, 1, 48, 48)).shape == (5, 16)
    real = torch.rand(70, 1, 48, 48)
    labels = torch.arange(70) % 7
    predicted = features.predict(real).argmax(1)

    def copies_of_real(label: int, n: int) -> torch.Tensor:  # a "generator" that returns real images
        return real[labels == label][:n]

    report = quality_report(real, labels, copies_of_real, features, n_per_class=10, kid_subsets=5, kid_subset_size=5)
    for label, name in enumerate(EMOTIONS):
        scores = report["per_class"][name]
        assert abs(scores["fid"]) < 1e-3 and scores["n_real"] == scores["n_fake"] == 10
        expected = float((predicted[labels == label] == label).float().mean())
        assert scores["agreement"] == pytest.approx(expected) == pytest.approx(scores["real_agreement"])
    assert set(report) >= {"mean_fid", "mean_kid_mean", "mean_agreement", "mean_fid_real_halves"}


def test_counts_fixed_per_class_or_to_a_target_share():
    assert plan_counts(5, None) == [5] * 7
    assert plan_counts({"disgust": 3, "fear": 1}, None) == [0, 3, 1, 0, 0, 0, 0]
    assert plan_counts(None, 0.5, [3995, 436, 4097, 7215, 4965, 4830, 3171]) == [0, 3172, 0, 0, 0, 0, 437]
    for n, share, message in [(None, None, "exactly one of"), (5, 0.5, "exactly one of"), (-1, None, "integers >= 0"),
                              ({"joy": 2}, None, "unknown classes"), (None, 1.5, "target_share must be")]:
        with pytest.raises(FERError, match=message):
            plan_counts(n, share, [10] * 7)


@pytest.fixture
def gan_ckpt(tmp_path):
    gan = tiny_gan()
    path = tmp_path / "gan.ckpt"
    torch.save({"state_dict": gan.state_dict(), "hyper_parameters": dict(gan.hparams)}, path)
    return path


def generate_config(root, out, gan_ckpt, **generate_options):
    options = {"n_per_class": 3, "target_share": None, "filter_min_conf": None, "classifier_ckpt": None,
               "max_attempts_factor": 20, "batch_size": 4, **generate_options}
    return OmegaConf.create({"seed": 7, "gan_ckpt": str(gan_ckpt), "data": {"root": str(root), "cache_dir": str(out / "cache")},
                             "generate": options, "paths": {"output_dir": str(out)}})


def test_generate_writes_pngs_and_a_manifest_and_never_overwrites(fer_folders, tmp_path, gan_ckpt):
    out = tmp_path / "gen"
    report = generate(generate_config(fer_folders, out, gan_ckpt, n_per_class={"disgust": 5, "fear": 2}))
    folder = out / "synthetic"
    assert report["total"] == 7 and report["per_class"]["disgust"] == {"wanted": 5, "generated": 5, "kept": 5}
    assert sorted(p.name for p in (folder / "disgust").iterdir()) == sorted(f"disgust_{(7 * 7 + 1) * 10_000_000 + i}.png" for i in range(5))
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    assert [r["class"] for r in rows] == ["disgust"] * 5 + ["fear"] * 2
    assert len({r["generator_sha256"] for r in rows}) == 1 and len(rows[0]["generator_sha256"]) == 64
    for row in rows:
        image = Image.open(folder / row["file"])
        assert image.mode == "L" and image.size == (48, 48)
    assert not list(folder.rglob(".*.tmp"))

    # the same latents give the same images; a second run into the same folder is refused
    first = np.asarray(Image.open(folder / rows[0]["file"]))
    with pytest.raises(FERError, match="already holds generated images"):
        generate(generate_config(fer_folders, out, gan_ckpt))
    assert np.array_equal(first, np.asarray(Image.open(folder / rows[0]["file"])))
    again = generate(generate_config(fer_folders, tmp_path / "gen2", gan_ckpt, n_per_class={"disgust": 5}))
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "gen2" / "synthetic" / rows[0]["file"])))
    assert again["total"] == 5


def test_generate_to_a_target_share_and_with_the_confidence_filter(tmp_path, gan_ckpt):
    root = write_folders(tmp_path / "fer", {"Training": 4})
    for extra in range(4):  # happy is the largest class: 8 images
        Image.fromarray(np.full((48, 48), 128, np.uint8)).save(root / "train" / "happy" / f"Training_x{extra}.png")
    report = generate(generate_config(root, tmp_path / "a", gan_ckpt, n_per_class=None, target_share=1.0))
    assert [report["per_class"][name]["kept"] for name in EMOTIONS] == [4, 4, 4, 0, 4, 4, 4]

    classifier = tiny_classifier()
    clf_path = tmp_path / "clf.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                "datamodule_hyper_parameters": {"image_size": 48}}, clf_path)
    report = generate(generate_config(root, tmp_path / "b", gan_ckpt, n_per_class=2, filter_min_conf=0.01,
                                      classifier_ckpt=str(clf_path), max_attempts_factor=3))
    judge = ClassifierFeatures(classifier, 48)
    for name, counts in report["per_class"].items():
        assert counts["kept"] <= 2 and counts["generated"] <= 6
        files = sorted((tmp_path / "b" / "synthetic" / name).glob("*.png"))
        assert len(files) == counts["kept"]
        for file in files:  # every kept sample is one the classifier labels as its class
            image = torch.from_numpy(np.asarray(Image.open(file))).float().div(255).view(1, 1, 48, 48)
            assert judge.predict(image).argmax(1).item() == EMOTIONS.index(name)


def test_bad_generate_input_names_the_key_or_file(fer_folders, tmp_path, gan_ckpt):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    classifier_ckpt = tmp_path / "clf.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}}}, classifier_ckpt)
    cases = [
        (generate_config(fer_folders, tmp_path / "o1", tmp_path / "missing.ckpt"), "gan_ckpt: no checkpoint at"),
        (generate_config(fer_folders, tmp_path / "o2", garbage), r"gan_ckpt: .* is not a checkpoint of this project \(not a file written by torch.save\)"),
        (generate_config(fer_folders, tmp_path / "o3", classifier_ckpt), "is not a checkpoint of this project's GAN"),
        (generate_config(fer_folders, fer_folders / "inside", gan_ckpt), "is inside the dataset folder"),
        (generate_config(fer_folders, tmp_path / "o4", gan_ckpt, n_per_class=None), "exactly one of"),
        (generate_config(fer_folders, tmp_path / "o5", gan_ckpt, filter_min_conf=0.5), "needs generate.classifier_ckpt"),
    ]
    for cfg, message in cases:
        with pytest.raises(FERError, match=message):
            generate(cfg)
    assert not (fer_folders / "inside").exists()


def test_train_gan_writes_checkpoint_grid_events_and_quality(fer_folders, tmp_path):
    classifier = tiny_classifier()
    clf_path = tmp_path / "clf.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                "datamodule_hyper_parameters": {"image_size": 40}}, clf_path)
    cfg = compose_config("train_gan", tmp_path, [f"data.root={fer_folders}", *TINY_GAN, "trainer.max_epochs=2",
                                                 f"quality.classifier_ckpt={clf_path}", "quality.n_per_class=6",
                                                 "quality.kid_subsets=3", "quality.kid_subset_size=3"])
    result = train_gan(cfg)
    run = tmp_path / "run"
    assert result["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    checkpoint = torch.load(result["ckpt_path"], weights_only=True)  # plain-dict hparams: loads safely
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * 2 * (84 // 16)  # 2 optimizer steps a batch
    gan, sha = load_gan(result["ckpt_path"])
    assert gan.ema is not None and len(sha) == 64
    assert Image.open(run / "samples.png").size[0] > 0
    quality = result["quality"]
    assert (run / "quality.json").is_file() and set(quality["per_class"]) == set(EMOTIONS)
    assert all(0 <= c["agreement"] <= 1 and c["n_fake"] == 6 for c in quality["per_class"].values())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("gan/samples")] == [0, 1]  # the grid after every epoch
    assert {"gan/d_loss_epoch", "gan/g_loss_epoch", "quality/mean_fid", "quality/disgust/agreement"} <= set(events.Tags()["scalars"])


def test_a_finished_gan_run_resumed_measures_and_draws_without_training(fer_folders, tmp_path):
    first = compose_config("train_gan", tmp_path / "a", [f"data.root={fer_folders}", *TINY_GAN, "trainer.max_epochs=1"])
    last = train_gan(first)["ckpt_path"]
    before = torch.load(last, weights_only=True)["global_step"]
    resumed = compose_config("train_gan", tmp_path / "b", [f"data.root={fer_folders}", *TINY_GAN, "trainer.max_epochs=1",
                                                           f"ckpt_path={last}"])
    train_gan(resumed)
    assert (tmp_path / "b" / "run" / "samples.png").is_file()  # the callback never ran: the stage drew it
    assert not (tmp_path / "b" / "run" / "checkpoints").exists() and torch.load(last, weights_only=True)["global_step"] == before
