"""Networks and the classifier LightningModule."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from fer.models.classifier import EmotionClassifier, load_classifier
from fer.models.nets import ConvNet

from conftest import compose_config


@pytest.mark.parametrize("model", ["seed_cnn", "vgg", "resnet18"])
@pytest.mark.parametrize("size", [48, 40])
def test_every_configured_network_trains_a_step(tmp_path, model, size):
    cfg = compose_config("train", tmp_path, [f"model={model}"])
    classifier: EmotionClassifier = instantiate(cfg.model, _recursive_=False)
    images, labels = torch.rand(4, 1, size, size), torch.tensor([0, 1, 5, 6])
    logits = classifier(images)
    assert logits.shape == (4, 7)
    loss = classifier._loss(logits, labels)
    loss.backward()
    grads = [p.grad for p in classifier.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    classifier.eval()
    probs = classifier.predict_step((images, labels), 0)
    assert torch.allclose(probs.sum(1), torch.ones(4))


@pytest.mark.parametrize("pool_size", [1, 2])
def test_a_pooling_grid_keeps_where_on_the_face_a_feature_fired(pool_size):
    net = ConvNet(stages=[[8], [16]], dense=16, dropout=0.0, pool_size=pool_size).eval()
    features = torch.rand(3, 16, 2, 2)
    upside_down = features.flip(-2, -1)  # the same features, fired in the opposite corners
    same = torch.allclose(net.head(features), net.head(upside_down), atol=1e-6)
    assert same == (pool_size == 1)
    assert net(torch.rand(3, 1, 40, 40)).shape == net(torch.rand(3, 1, 48, 48)).shape == (3, 7)


@pytest.mark.parametrize("ceil_pool", [False, True])
def test_ceil_pool_keeps_the_last_row_of_an_odd_sized_map(ceil_pool):
    net = ConvNet(stages=[[4], [4]], dense=4, dropout=0.0, ceil_pool=ceil_pool).eval()
    last_pool = net.features[-1]
    features = torch.rand(1, 4, 5, 5)  # a 40 px face's last map
    chin_changed = features.clone()
    chin_changed[..., -1, :] += 1.0  # only the map's last row
    assert last_pool(features).shape[-2:] == ((3, 3) if ceil_pool else (2, 2))
    assert bool((last_pool(features) != last_pool(chin_changed)).any()) == ceil_pool
    assert net(torch.rand(2, 1, 40, 40)).shape == (2, 7)


def test_hyperparameters_are_plain_and_rebuild_the_model(tmp_path):
    cfg = compose_config("train", tmp_path, ["model=vgg"])
    classifier = instantiate(cfg.model, _recursive_=False, class_weights=[1.0] * 7)
    hparams = dict(classifier.hparams)
    assert type(hparams["net"]) is dict and type(hparams["optimizer"]) is dict
    twin = EmotionClassifier(**hparams)
    twin.load_state_dict(classifier.state_dict())
    x = torch.rand(2, 1, 48, 48)
    assert torch.equal(classifier.eval()(x), twin.eval()(x))


def test_class_weights_weigh_the_loss():
    net = {"_target_": "fer.models.nets.ConvNet", "stages": [[4]], "dense": 4}
    opt = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    plain = EmotionClassifier(net=net, optimizer=opt)
    weighted = EmotionClassifier(net=net, optimizer=opt, class_weights=[1, 1, 1, 1, 1, 1, 10])
    logits, labels = torch.zeros(2, 7), torch.tensor([0, 6])
    logits[0, 0] = 5  # right on class 0, unsure on class 6: the weighted loss is dominated by class 6
    assert weighted._loss(logits, labels) > plain._loss(logits, labels)


def test_compiling_keeps_the_checkpoint_names(tmp_path):
    cfg = compose_config("train", tmp_path, ["model.compile=true"])
    classifier = instantiate(cfg.model, _recursive_=False)
    names = list(classifier.state_dict())
    classifier.on_fit_start()  # where training compiles the net, in place
    assert list(classifier.state_dict()) == names and not any("_orig_mod" in n for n in names)
    torch.save({"hyper_parameters": dict(classifier.hparams), "state_dict": classifier.state_dict()}, tmp_path / "c.ckpt")
    loaded, _ = load_classifier(tmp_path / "c.ckpt")
    assert loaded.hparams.compile and torch.equal(loaded.net.head[-1].weight, classifier.net.head[-1].weight)


def test_mixed_batches_train_on_soft_targets():
    net = {"_target_": "fer.models.nets.ConvNet", "stages": [[4]], "dense": 4}
    opt = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    classifier = EmotionClassifier(net=net, optimizer=opt, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    images, labels = torch.rand(8, 1, 40, 40), torch.arange(8) % 7
    torch.manual_seed(0)
    mixed, targets = classifier.mix(images, labels)
    assert targets.shape == (8, 7) and not torch.equal(mixed, images)
    logits = classifier(mixed)
    soft, hard = classifier._loss(logits, targets), classifier._loss(logits, labels)
    assert torch.isfinite(soft) and soft != hard


def small_classifier(**options) -> EmotionClassifier:
    return EmotionClassifier(net={"_target_": "fer.models.nets.ConvNet", "stages": [[8], [16]], "dense": 16, "dropout": 0.0},
                             optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01}, **options)


def test_distillation_pulls_the_student_toward_its_teachers_and_stays_out_of_its_checkpoint(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    teachers = []
    for i in range(2):
        teacher = small_classifier().eval()
        torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, tmp_path / f"t{i}.ckpt")
        teachers.append(teacher)
    images, labels = torch.rand(64, 1, 40, 40), torch.randint(0, 7, (64,))
    with torch.no_grad():
        target = torch.stack([t(images).div(2.0).softmax(1) for t in teachers]).mean(0)  # the ensemble's soft targets

    student = small_classifier(distill={"teachers": [str(tmp_path / f"t{i}.ckpt") for i in range(2)], "weight": 1.0, "temperature": 2.0})

    def gap() -> float:  # KL(teachers || student) at the distillation temperature
        with torch.no_grad():
            kl = torch.nn.functional.kl_div(student.eval()(images).div(2.0).log_softmax(1), target, reduction="batchmean")
        student.train()
        return float(kl)

    before = gap()
    trainer = L.Trainer(max_epochs=15, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0)
    data = DataLoader(TensorDataset(images, labels), batch_size=16)
    trainer.fit(student, data, data)
    assert len(student.teachers) == 2 and gap() < 0.3 * before  # weight 1: the labels play no part, the teachers do
    assert not [k for k in student.state_dict() if "teacher" in k]  # the teachers are not saved with the student
    assert all(not p.requires_grad for t in student.teachers for p in t.parameters())


def test_a_flip_teacher_gives_the_mean_of_its_two_views(tmp_path):
    torch.manual_seed(0)
    teacher = small_classifier().eval()
    with torch.no_grad():
        teacher.last_layer().weight.mul_(30)  # a confident teacher, whose two views disagree
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, tmp_path / "t.ckpt")
    images = torch.rand(16, 1, 40, 40) * torch.linspace(0, 1, 40)  # dark on the left: the mirror is another face
    logits = torch.randn(16, 7)

    def loss(flip: bool) -> float:
        student = small_classifier(distill={"teachers": [str(tmp_path / "t.ckpt")], "weight": 1.0, "temperature": 2.0, "flip": flip})
        student.teachers = [load_classifier(tmp_path / "t.ckpt")[0]]
        return float(student.distillation_loss(logits, images))

    with torch.no_grad():
        both_views = (teacher(images).div(2.0).softmax(1) + teacher(images.flip(-1)).div(2.0).softmax(1)) / 2
        one_view = teacher(images).div(2.0).softmax(1)
    expected = [float(torch.nn.functional.kl_div(logits.div(2.0).log_softmax(1), target, reduction="batchmean") * 4)
                for target in (both_views, one_view)]
    assert loss(flip=True) == pytest.approx(expected[0], rel=1e-5)
    assert loss(flip=False) == pytest.approx(expected[1], rel=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-3 * expected[1]  # the mirrored view changes the target (100x the tolerance)


def overlapping_faces(counts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 16, 16) images whose class is their brightness, neighbouring classes overlapping."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    brightness = 0.1 + 0.13 * labels + 0.07 * torch.randn(len(labels), generator=generator)
    return (brightness.view(-1, 1, 1, 1) + 0.05 * torch.randn(len(labels), 1, 16, 16, generator=generator)).clamp(0, 1), labels


def test_decoupled_retraining_moves_only_the_last_layer_and_lifts_the_rare_class(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
    from torchmetrics.functional.classification import multiclass_recall

    def fit(model, loader, epochs):
        L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0).fit(model, loader)

    def disgust_recall(model) -> float:
        with torch.no_grad():
            return float(multiclass_recall(model.eval()(test_images), test_labels, 7, average="none")[1])

    L.seed_everything(0)
    images, labels = overlapping_faces([120, 8, 120, 120, 120, 120, 120], seed=0)  # disgust rare, as in FER-2013
    test_images, test_labels = overlapping_faces([60] * 7, seed=1)
    natural = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
    trained = small_classifier()
    fit(trained, natural, epochs=6)
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}, tmp_path / "trained.ckpt")

    balanced = DataLoader(TensorDataset(images, labels), batch_size=32,
                          sampler=WeightedRandomSampler((1 / torch.bincount(labels).float())[labels], len(labels)))
    retrained = small_classifier(init_from=str(tmp_path / "trained.ckpt"), retrain_last_layer=True)
    fit(retrained, balanced, epochs=6)

    before, after = trained.state_dict(), retrained.state_dict()
    last = {"net.head.6.weight", "net.head.6.bias"}  # the last linear layer of ConvNet's head
    assert all(torch.equal(before[k], after[k]) for k in before if k not in last)  # BatchNorm statistics included
    assert not any(torch.equal(before[k], after[k]) for k in last)
    assert disgust_recall(retrained) > disgust_recall(trained) + 0.3  # here 0.00 -> 0.63


def test_retraining_the_last_layer_needs_a_trained_net_of_the_same_shape(tmp_path):
    from fer import FERError

    with pytest.raises(FERError, match="model.retrain_last_layer=true .* model.init_from"):
        small_classifier(retrain_last_layer=True)
    other = EmotionClassifier(net={"_target_": "fer.models.nets.ConvNet", "stages": [[4]], "dense": 4},
                              optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, tmp_path / "other.ckpt")
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    data = DataLoader(TensorDataset(*overlapping_faces([2] * 7, seed=0)), batch_size=7)
    with pytest.raises(FERError, match=r"model.init_from=.*other.ckpt holds another net than model.net: .*size mismatch"):
        trainer.fit(small_classifier(init_from=str(tmp_path / "other.ckpt")), data)


def test_per_face_standardisation_ignores_brightness_and_contrast():
    net = {"_target_": "fer.models.nets.ConvNet", "stages": [[4], [8]], "dense": 8}
    opt = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    faces = torch.rand(3, 1, 40, 40) * 0.5 + 0.25
    relit = (faces - 0.5) * 0.6 + 0.55  # lower contrast, brighter: the same faces
    per_face = EmotionClassifier(net=net, optimizer=opt, standardize_per_face=True).eval()
    assert torch.allclose(per_face(relit), per_face(faces), atol=1e-4)
    seen = per_face.standardize(faces)
    assert torch.allclose(seen.mean(dim=(-2, -1)), torch.zeros(3, 1), atol=1e-5)
    assert torch.allclose(seen.std(dim=(-2, -1)), torch.ones(3, 1), atol=1e-4)
    assert torch.isfinite(per_face(torch.full((1, 1, 40, 40), 0.3))).all()  # a blank face
    by_dataset = EmotionClassifier(net=net, optimizer=opt).eval()
    assert not torch.allclose(by_dataset.standardize(relit), by_dataset.standardize(faces), atol=1e-2)


def test_muon_orthogonalises_the_hidden_weights_and_adamw_steps_the_rest():
    muon = {"_target_": "fer.models.optim.MuonAdamW", "_partial_": True, "lr": 0.01, "weight_decay": 0.0}
    torch.manual_seed(0)
    classifier = EmotionClassifier(net={"_target_": "fer.models.nets.ConvNet", "stages": [[8], [16, 16]], "dense": 16},
                                   optimizer=muon)
    optimizer = classifier.configure_optimizers()
    hidden, rest = optimizer.param_groups
    conv1, conv2, conv3 = (m for m in classifier.net.modules() if isinstance(m, torch.nn.Conv2d))
    first, dense, last = (m for m in classifier.net.modules() if isinstance(m, torch.nn.Linear) or m is conv1)
    assert hidden["hidden_matrix"] and {id(p) for p in hidden["params"]} == {id(conv2.weight), id(conv3.weight), id(dense.weight)}
    assert {id(conv1.weight), id(last.weight)} <= {id(p) for p in rest["params"]}

    classifier._loss(classifier(torch.rand(32, 1, 40, 40)), torch.arange(32) % 7).backward()
    grad3, grad1 = conv3.weight.grad.flatten(1).clone(), conv1.weight.grad.clone()
    before3, before1 = conv3.weight.detach().clone(), conv1.weight.detach().clone()
    optimizer.step()

    # Muon: the (16, 16*3*3) kernel moved by an orthogonalised matrix (its singular values near one, at AdamW's
    # RMS scale 0.2 * sqrt(144)), where the gradient's own singular values spread three-fold and more
    step = (conv3.weight.detach() - before3).flatten(1) / (-0.01 * 0.2 * 144**0.5)
    singular, spread = torch.linalg.svdvals(step), torch.linalg.svdvals(grad3)
    assert singular.min() > 0.5 and singular.max() < 1.5 and singular.max() < 2 * singular.min()
    assert spread.max() > 3 * spread.min()
    assert torch.nn.functional.cosine_similarity(step.flatten(), grad3.flatten(), dim=0) > 0.3  # still downhill
    # AdamW: its first step moves every weight with a gradient by the learning rate, against the gradient's sign
    moved = conv1.weight.detach() - before1
    assert torch.allclose(moved, -0.01 * grad1.sign(), atol=1e-5)


def test_muon_trains_a_classifier():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(0)
    images, labels = overlapping_faces([40] * 7, seed=0)
    classifier = EmotionClassifier(
        net={"_target_": "fer.models.nets.ConvNet", "stages": [[8], [16]], "dense": 16, "dropout": 0.0},
        optimizer={"_target_": "fer.models.optim.MuonAdamW", "_partial_": True, "lr": 0.01})
    L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(classifier, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    with torch.no_grad():
        accuracy = (classifier.eval()(images).argmax(1) == labels).float().mean()
    assert accuracy > 0.6  # 7 brightness levels, neighbours overlapping: chance is 0.14
