"""The conditional DCGAN: nets, LightningModule, quality metrics and the generation stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fer import EMOTIONS, FERError
from fer.models.classifier import ClassifierFeatures, EmotionClassifier
from fer.models.diffaugment import DiffAugment
from fer.models.gan import ConditionalGAN, FaceGenerator
from fer.models.gan_nets import Discriminator, Generator
from fer.reports.gan_quality import distances, embed, quality_report
from fer.training.generate import generate, load_gan, plan_counts
from fer.training.train_gan import FROZEN_FEATURES, train_gan

from conftest import REPO, compose_config, read_manifest, read_pixels, run_script, write_folders

TINY_GAN = ["data.batch_size=16", "data.align=false", "model=dcgan", "model.generator.channels=[16,8,8]", "model.discriminator.channels=[8,8,16]",
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


def save_classifier(classifier: EmotionClassifier, path) -> str:
    """A classifier checkpoint as training writes one (weights, hyperparameters, image size)."""
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                "datamodule_hyper_parameters": {"image_size": 48}}, path)
    return str(path)


@pytest.mark.parametrize("conditioning", ["projection", "auxiliary", "projection+auxiliary"])
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
        assert (classes is None) == ("auxiliary" not in conditioning)
        if classes is not None:
            assert classes.shape == (3, len(EMOTIONS))
    # the label changes the output: the model is class-conditional
    z = torch.randn(1, 16)
    assert not torch.allclose(g.eval()(z, torch.tensor([0])), g(z, torch.tensor([1])))
    if "projection" in conditioning:
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


def test_conditional_batchnorm_uses_the_label():
    g = Generator(latent_dim=16, channels=(32, 16, 8), conditioning="batchnorm").eval()
    assert g.embed is None  # the label reaches G only through the normalisation layers
    for norm in g.norms:  # start as plain BatchNorm: scale 1, shift 0 for every class
        norm.scale.weight.data.normal_(1, 0.5)
        norm.shift.weight.data.normal_(0, 0.5)
    z = torch.randn(1, 16).repeat(2, 1)
    a, b = g(z, torch.tensor([0, 1]))
    assert a.shape == (1, 48, 48) and (a - b).abs().mean() > 1e-3
    assert torch.equal(g(z[:1], torch.tensor([3])), g(z[:1], torch.tensor([3])))


def test_diffaugment_applies_one_transform_to_real_and_fake_and_is_differentiable():
    augment = DiffAugment()
    real = torch.rand(6, 1, 48, 48) * 2 - 1
    fake = real.clone().requires_grad_()
    seen_real, seen_fake = augment(real, fake, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen_real, seen_fake.detach())  # equal inputs -> equal outputs: the same sampled transform
    assert not torch.allclose(seen_real, real)  # and it changed them
    assert (seen_real[0] == 0).float().mean() > 0.05  # cutout zeroed a square (at least part of it in the image)
    seen_fake.square().sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0  # G gets a gradient through the augmentation
    other = augment(real, generator=torch.Generator().manual_seed(1))[0]
    assert not torch.allclose(other, seen_real)  # a new call samples new transforms
    # each transform alone: brightness shifts a row by one level, translation moves whole pixels
    shifted = DiffAugment(["brightness"])(real, generator=torch.Generator().manual_seed(0))[0] - real
    assert torch.allclose(shifted, shifted[:, :, :1, :1].expand_as(shifted), atol=1e-6)
    moved = DiffAugment(["translation"], translation_ratio=0.25)(real, generator=torch.Generator().manual_seed(0))[0]
    values = set(torch.unique(moved).tolist()) - {0.0}
    assert values <= set(torch.unique(real).tolist())  # nearest sampling: every pixel is an input pixel or padding
    with pytest.raises(ValueError, match="unknown transforms"):
        DiffAugment(["saturation"])


def test_a_gan_with_diffaugment_and_two_learning_rates_steps(tmp_path):
    import lightning as L

    adam = {"_target_": "torch.optim.Adam", "_partial_": True}
    gan = ConditionalGAN(
        generator={"_target_": "fer.models.gan_nets.Generator", "latent_dim": 8, "channels": [16, 8, 8], "conditioning": "batchnorm"},
        discriminator={"_target_": "fer.models.gan_nets.Discriminator", "channels": [8, 8, 16]},
        optimizer_g={**adam, "lr": 1e-4}, optimizer_d={**adam, "lr": 4e-4},
        diffaugment={"_target_": "fer.models.diffaugment.DiffAugment", "policy": ["translation", "cutout"]})
    assert isinstance(gan.augment, DiffAugment)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 1, 48, 48), torch.arange(8) % 7), batch_size=8)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(gan, data)
    opt_g, opt_d = (o.optimizer for o in trainer.optimizers) if hasattr(trainer.optimizers[0], "optimizer") else trainer.optimizers
    assert [opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]] == [1e-4, 4e-4]
    assert trainer.global_step == 2


@pytest.mark.filterwarnings(f"ignore:{FROZEN_FEATURES}")  # the frozen classifier is in eval mode on purpose
def test_a_feature_discriminator_trains_its_head_on_a_frozen_classifier_and_teaches_the_generator(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    gan = tiny_gan(feature_ckpt=save_classifier(tiny_classifier(), tmp_path / "classifier.ckpt"), ema_decay=None)
    frozen = {k: v.clone() for k, v in gan.features.state_dict().items()}
    head = {k: v.detach().clone() for k, v in gan.feature_critic.named_parameters()}

    # the head reads the label (projection), and its verdict reaches G through the frozen classifier
    fake, labels = gan.generator(torch.randn(14, 8), torch.arange(14) % 7), torch.arange(14) % 7
    logits = gan._feature_logits(fake, labels)
    assert not torch.allclose(logits, gan._feature_logits(fake, (labels + 1) % 7))
    logits.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gan.generator.parameters())
    assert all(p.grad is None for p in gan.features.parameters())

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(28, 1, 48, 48), torch.arange(28) % 7), batch_size=14)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(gan, data)
    # D's optimiser trains the head; the classifier's weights and BatchNorm statistics never move (eval mode)
    assert all(not torch.equal(v, head[k]) for k, v in gan.feature_critic.named_parameters() if not k.endswith("bias"))
    assert all(torch.equal(v, frozen[k]) for k, v in gan.features.state_dict().items())


def test_bad_gan_options_are_refused():
    with pytest.raises(FERError, match="model.loss must be one of"):
        tiny_gan(loss="wasserstein")
    with pytest.raises(FERError, match="model.discriminator: conditioning must be one of"):
        tiny_gan(discriminator={"conditioning": "concat"})
    with pytest.raises(FERError, match="model.ema_decay"):
        tiny_gan(ema_decay=1.5)
    with pytest.raises(FERError, match="model.feature_weight"):
        tiny_gan(feature_weight=-1)
    with pytest.raises(FERError, match="model.diffaugment: .*unknown transforms"):
        tiny_gan(diffaugment={"_target_": "fer.models.diffaugment.DiffAugment", "policy": ["hue"]})


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

    report = quality_report(real, labels, copies_of_real, features, n_per_class=10, kid_subsets=5, kid_subset_size=5,
                            recall_images=real, recall_labels=labels)
    for label, name in enumerate(EMOTIONS):
        scores = report["per_class"][name]
        assert abs(scores["fid"]) < 1e-3 and scores["n_real"] == scores["n_fake"] == 10
        expected = float((predicted[labels == label] == label).float().mean())
        assert scores["agreement"] == pytest.approx(expected) == pytest.approx(scores["real_agreement"])
        assert scores["real_recall"] == pytest.approx(expected)
        assert scores["diversity"] == pytest.approx(scores["real_diversity"]) and scores["diversity"] > 0
    assert report["min_agreement_vs_recall"] <= report["mean_agreement_vs_recall"]

    def one_face(label: int, n: int) -> torch.Tensor:  # a collapsed generator: one image for every latent
        return real[labels == label][:1].expand(n, -1, -1, -1)

    collapsed = quality_report(real, labels, one_face, features, n_per_class=10, kid_subsets=5, kid_subset_size=5)
    assert all(abs(c["diversity"]) < 1e-6 < c["real_diversity"] for c in collapsed["per_class"].values())
    assert "mean_real_recall" not in collapsed  # no held-out faces given
    assert set(report) >= {"mean_fid", "mean_kid_mean", "mean_agreement", "mean_fid_real_halves"}


def test_counts_fixed_per_class_or_to_a_target_share():
    assert plan_counts(5, None) == [5] * 7
    assert plan_counts({"disgust": 3, "fear": 1}, None) == [0, 3, 1, 0, 0, 0, 0]
    assert plan_counts(None, 0.5, [3995, 436, 4097, 7215, 4965, 4830, 3171]) == [0, 3172, 0, 0, 0, 0, 437]
    # the cap of the ablation: minority classes lifted to half of the median class (4,097)
    assert plan_counts(None, 0.5, [3995, 436, 4097, 7215, 4965, 4830, 3171], "median") == [0, 1613, 0, 0, 0, 0, 0]
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
    rows = read_manifest(folder / "manifest.csv")
    assert [r["class"] for r in rows] == ["disgust"] * 5 + ["fear"] * 2
    assert len({r["generator_sha256"] for r in rows}) == 1 and len(rows[0]["generator_sha256"]) == 64
    for row in rows:
        with Image.open(folder / row["file"]) as image:
            assert image.mode == "L" and image.size == (48, 48)
    assert not list(folder.rglob(".*.tmp"))

    # the same latents give the same images; a second run into the same folder is refused
    first = read_pixels(folder / rows[0]["file"])
    with pytest.raises(FERError, match="already holds generated images"):
        generate(generate_config(fer_folders, out, gan_ckpt))
    assert np.array_equal(first, read_pixels(folder / rows[0]["file"]))
    again = generate(generate_config(fer_folders, tmp_path / "gen2", gan_ckpt, n_per_class={"disgust": 5}))
    assert np.array_equal(first, read_pixels(tmp_path / "gen2" / "synthetic" / rows[0]["file"]))
    assert again["total"] == 5


def test_generate_to_a_target_share_and_with_the_confidence_filter(tmp_path, gan_ckpt):
    root = write_folders(tmp_path / "fer", {"Training": 4})
    for extra in range(4):  # happy is the largest class: 8 images
        Image.fromarray(np.full((48, 48), 128, np.uint8)).save(root / "train" / "happy" / f"Training_x{extra}.png")
    report = generate(generate_config(root, tmp_path / "a", gan_ckpt, n_per_class=None, target_share=1.0))
    assert [report["per_class"][name]["kept"] for name in EMOTIONS] == [4, 4, 4, 0, 4, 4, 4]

    classifier = tiny_classifier()
    clf_path = save_classifier(classifier, tmp_path / "clf.ckpt")
    report = generate(generate_config(root, tmp_path / "b", gan_ckpt, n_per_class=2, filter_min_conf=0.01,
                                      classifier_ckpt=str(clf_path), max_attempts_factor=3))
    judge = ClassifierFeatures(classifier, 48)
    for name, counts in report["per_class"].items():
        assert counts["kept"] <= 2 and counts["generated"] <= 6
        files = sorted((tmp_path / "b" / "synthetic" / name).glob("*.png"))
        assert len(files) == counts["kept"]
        for file in files:  # every kept sample is one the classifier labels as its class
            image = torch.from_numpy(read_pixels(file)).float().div(255).view(1, 1, 48, 48)
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
    generator, sha = load_gan(result["ckpt_path"])
    assert isinstance(generator, FaceGenerator) and len(sha) == 64
    ema = {k.removeprefix("ema.module."): v for k, v in checkpoint["state_dict"].items() if k.startswith("ema.module.")}
    assert all(torch.equal(v, ema[k]) for k, v in generator.net.state_dict().items())  # it samples the EMA copy
    assert read_pixels(run / "samples.png").shape[1] > 0
    quality = result["quality"]
    assert (run / "quality.json").is_file() and set(quality["per_class"]) == set(EMOTIONS)
    assert all(0 <= c["agreement"] <= 1 and c["n_fake"] == 6 for c in quality["per_class"].values())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("gan/samples")] == [0, 1]  # the grid after every epoch
    assert {"gan/d_loss_epoch", "gan/g_loss_epoch", "quality/mean_fid", "quality/disgust/agreement",
            "quality/disgust/real_recall", "quality/disgust/diversity", "quality/min_agreement_vs_recall"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("quality/disgust/agreement")) == 3  # the GANQuality callback after each epoch, then the end


def test_a_finished_gan_run_resumed_measures_and_draws_without_training(fer_folders, tmp_path):
    first = compose_config("train_gan", tmp_path / "a", [f"data.root={fer_folders}", *TINY_GAN, "trainer.max_epochs=1",
                                                         "quality.classifier_ckpt=null"])
    last = train_gan(first)["ckpt_path"]
    before = torch.load(last, weights_only=True)["global_step"]
    resumed = compose_config("train_gan", tmp_path / "b", [f"data.root={fer_folders}", *TINY_GAN, "trainer.max_epochs=1",
                                                           "quality.classifier_ckpt=null", f"ckpt_path={last}"])
    train_gan(resumed)
    assert (tmp_path / "b" / "run" / "samples.png").is_file()  # the callback never ran: the stage drew it
    assert not (tmp_path / "b" / "run" / "checkpoints").exists() and torch.load(last, weights_only=True)["global_step"] == before


def test_the_hydra_entries_train_ship_and_generate_from_a_generator(fer_folders, tmp_path):
    """scripts/train_gan.py (model=cgan: DiffAugment, conditional BN) -> scripts/ship_gan.py -> scripts/generate.py."""
    classifier = tiny_classifier()
    clf_path = tmp_path / "clf.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                "datamodule_hyper_parameters": {"image_size": 40}}, clf_path)
    cgan = [o for o in TINY_GAN if o not in ("model=dcgan", "model.generator.embed_dim=4")]
    trained = run_script("train_gan.py", [f"data.root={fer_folders}", *cgan, "trainer.max_epochs=1", f"quality.classifier_ckpt={clf_path}",
                                          "quality.n_per_class=6", "quality.kid_subsets=3", "quality.kid_subset_size=3",
                                          f"hydra.run.dir={tmp_path / 'gan'}"], cwd=tmp_path)
    assert "validation_step" not in trained.stdout + trained.stderr  # no validation loop is by design: not a warning
    assert (tmp_path / "gan" / "samples.png").is_file() and (tmp_path / "gan" / "quality.json").is_file()
    assert list((tmp_path / "gan" / "tensorboard").glob("events.out.tfevents.*"))

    assets = tmp_path / "assets"
    result = run_script("ship_gan.py", [f"ckpt_path={tmp_path / 'gan' / 'checkpoints' / 'last.ckpt'}", f"out_dir={assets}",
                                        "training.commit=abc123", "training.machine=test", f"hydra.run.dir={tmp_path / 'ship'}"],
                        cwd=tmp_path)
    card = json.loads((assets / "gan_card.json").read_text())
    assert card["training"]["command"].startswith("python scripts/train_gan.py data.root=<local>/fer2013")  # no private path
    # model=cgan's feature discriminator looks through the shipped small classifier, named inside the package
    assert card["training"]["config"]["model"]["feature_ckpt"] == "${paths.assets}/feature_classifier/emotion_classifier.ckpt"
    assert card["training"]["generator_steps"] == 84 // 16 and card["training"]["commit"] == "abc123"
    assert set(card["quality"]["per_class"]) == set(EMOTIONS) and "agreement=" in result.stdout
    assert card["weights"] == "the EMA copy of G" and card["size_bytes"] == (assets / "gan_generator.ckpt").stat().st_size
    shipped = torch.load(assets / "gan_generator.ckpt", weights_only=True)
    assert not any("discriminator" in k or k.startswith(("ema.", "feature")) for k in shipped["state_dict"])  # G alone

    run_script("generate.py", [f"gan_ckpt={assets / 'gan_generator.ckpt'}", f"data.root={fer_folders}",
                               "generate.target_share=null", "generate.n_per_class={disgust:3,happy:2}",
                               f"hydra.run.dir={tmp_path / 'gen'}"], cwd=tmp_path)
    rows = read_manifest(tmp_path / "gen" / "synthetic" / "manifest.csv")
    assert [r["class"] for r in rows] == ["disgust"] * 3 + ["happy"] * 2 and rows[0]["generator_sha256"] == card["sha256"]

    missing = run_script("ship_gan.py", [f"ckpt_path={clf_path}", f"out_dir={tmp_path / 'nothing'}", "training.commit=a",
                                         "training.machine=b", f"hydra.run.dir={tmp_path / 'ship2'}"], cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "is not a checkpoint of this project's GAN training run" in missing.stderr
    assert not (tmp_path / "nothing" / "gan_generator.ckpt").exists()


SHIPPED_GENERATOR = REPO / "fer" / "assets" / "gan_generator.ckpt"


def test_the_shipped_generator_draws_faces_of_the_requested_classes(fer_folders, tmp_path):
    """`python scripts/generate.py` with no checkpoint named: the generator in fer/assets."""
    assert SHIPPED_GENERATOR.is_file() and SHIPPED_GENERATOR.stat().st_size < 10 * 2**20
    run_script("generate.py", [f"data.root={fer_folders}", "generate.target_share=null", "generate.n_per_class={disgust:4,fear:2}",
                               f"hydra.run.dir={tmp_path / 'gen'}"], cwd=tmp_path)
    synthetic = tmp_path / "gen" / "synthetic"
    rows = read_manifest(synthetic / "manifest.csv")
    assert [r["class"] for r in rows] == ["disgust"] * 4 + ["fear"] * 2
    for row in rows:
        pixels = read_pixels(synthetic / row["file"])
        assert pixels.dtype == np.uint8 and pixels.shape == (48, 48) and pixels.std() > 5  # a face, not a flat square
    card = json.loads((REPO / "fer" / "assets" / "gan_card.json").read_text())
    assert rows[0]["generator_sha256"] == card["sha256"]


def test_each_judge_reads_the_generator_and_the_table_shows_them_side_by_side(fer_folders, tmp_path, gan_ckpt):
    from fer.training.judge_generator import judge_generator

    always_happy = tiny_classifier()  # a judge that labels every face happy: agreement 1 for happy, 0 elsewhere
    with torch.no_grad():
        always_happy.net.head[-1].weight.zero_()
        always_happy.net.head[-1].bias.copy_(torch.tensor([0.0, 0, 0, 100, 0, 0, 0]))
    judges = [save_classifier(tiny_classifier(), tmp_path / "judge1.ckpt"), save_classifier(always_happy, tmp_path / "judge2.ckpt")]
    options = [f"data.root={fer_folders}", "data.align=false", f"paths.cache_dir={tmp_path / 'cache'}", f"gan_ckpt={gan_ckpt}",
               "quality.n_per_class=4", "quality.kid_subsets=2", "quality.kid_subset_size=2"]
    reports = judge_generator(compose_config("judge_generator", tmp_path, [*options, f"judges=[{judges[0]},{judges[1]}]"]))
    assert list(reports) == judges and all(set(r["per_class"]) == set(EMOTIONS) for r in reports.values())
    happy = reports[judges[1]]["per_class"]
    assert happy["happy"]["agreement"] == happy["happy"]["real_recall"] == 1.0
    assert all(happy[e]["agreement"] == happy[e]["real_recall"] == 0.0 for e in EMOTIONS if e != "happy")

    table = (tmp_path / "run" / "judges.md").read_text()
    first = reports[judges[0]]["per_class"]["happy"]
    assert f"| happy | {first['agreement']:.3f} | {first['real_recall']:.3f} | 1.000 | 1.000 |" in table
    assert f"judge 2: `{judges[1]}`" in table and (tmp_path / "run" / "judges.json").is_file()

    with pytest.raises(FERError, match="judges is an empty list"):
        judge_generator(compose_config("judge_generator", tmp_path / "none", [*options, "judges=[]"]))
