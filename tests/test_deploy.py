"""The classifier as shipped: logit adjustment, flip test-time augmentation, the ONNX graph beside
the checkpoint and the runtime that picks it."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from conftest import run_script, tiny_train_overrides, write_folders

from fer import EMOTIONS
from fer.models.classifier import EmotionClassifier
from fer.models.deploy import FaceClassifier, adjust_probabilities, load_face_classifier, load_runtime, prior_correction
from fer.training.ship import fit_class_bias, fit_prior_tau

HAPPY = EMOTIONS.index("happy")


def tiny_classifier(seed: int = 0) -> EmotionClassifier:
    torch.manual_seed(seed)
    return EmotionClassifier(net={"_target_": "fer.models.nets.ConvNet", "stages": [[8], [16]], "dense": 16},
                             optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})


def random_faces(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_raising_a_class_bias_makes_that_class_win_more_often():
    faces, model = random_faces(200), tiny_classifier()
    wins = []
    for bias in (0.0, 0.08, 0.09, 1.0):  # an untrained net's margins to "happy" lie in 0.07-0.11 here
        classifier = FaceClassifier(model, 40, class_bias=[bias if i == HAPPY else 0.0 for i in range(7)])
        with torch.inference_mode():
            wins.append(int((classifier(faces).argmax(1) == HAPPY).sum()))
    assert wins[0] < wins[1] < wins[2] < wins[3] == 200, wins


def test_fitted_biases_trade_little_accuracy_for_the_rare_class():
    # a model that under-predicts class 1 (a "disgust"): its logit is 1.5 too low
    generator = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor([10, 1, 5, 20, 10, 10, 8.0]), 4000, replacement=True, generator=generator)
    logits = torch.randn(4000, 7, generator=generator) + 2.5 * torch.nn.functional.one_hot(labels, 7)
    logits[:, 1] -= 1.5
    probs = logits.softmax(1)
    bias = fit_class_bias(probs, labels, max_accuracy_drop=0.005)
    before, after = probs.argmax(1), adjust_probabilities(probs, bias).argmax(1)
    recall = lambda predicted: float((predicted[labels == 1] == 1).float().mean())  # noqa: E731
    assert recall(after) > recall(before) + 0.2
    assert (after == labels).float().mean() >= (before == labels).float().mean() - 0.005
    assert abs(sum(bias)) < 1e-3  # centred: only differences between classes matter


FER_PRIOR = torch.tensor([3995, 436, 4097, 7215, 4965, 4830, 3171.0]) / 28709  # Training's class frequencies


def test_prior_correction_at_tau_0_is_the_identity_and_above_it_favours_rare_classes():
    probs = (torch.randn(2000, 7, generator=torch.Generator().manual_seed(0)) * 2).softmax(1)
    assert prior_correction(0.0, FER_PRIOR) == [0.0] * 7
    assert torch.allclose(adjust_probabilities(probs, prior_correction(0.0, FER_PRIOR)), probs, atol=1e-6)
    share = lambda tau: float((adjust_probabilities(probs, prior_correction(tau, FER_PRIOR)).argmax(1) == 1).float().mean())  # noqa: E731
    assert share(0.0) < share(0.5) < share(1.0)  # disgust, the rarest class, is predicted more often
    assert abs(sum(prior_correction(0.7, FER_PRIOR))) < 1e-3


def test_fitted_tau_lifts_the_recall_of_an_under_predicted_rare_class():
    # a model that learnt the training prior: rare classes' logits sit log(prior) lower
    generator = torch.Generator().manual_seed(1)
    labels = torch.multinomial(torch.ones(7), 5000, replacement=True, generator=generator)  # a balanced test set
    logits = torch.randn(5000, 7, generator=generator) + 2.0 * torch.nn.functional.one_hot(labels, 7) + FER_PRIOR.log()
    probs = logits.softmax(1)
    tau = fit_prior_tau(probs, labels, FER_PRIOR, max_accuracy_drop=0.0, criterion="balanced_accuracy")
    assert 0.5 <= tau <= 1.5  # near the 1.0 that divides the learnt prior out exactly
    adjusted = adjust_probabilities(probs, prior_correction(tau, FER_PRIOR)).argmax(1)
    assert (adjusted[labels == 1] == 1).float().mean() > (probs.argmax(1)[labels == 1] == 1).float().mean() + 0.2


def test_flip_tta_averages_the_mirrored_outputs():
    faces, model = random_faces(6), tiny_classifier()
    with torch.inference_mode():
        flipped = FaceClassifier(model, 40, tta="flip")(faces)
        plain = FaceClassifier(model, 40)(faces)
        mirrored = FaceClassifier(model, 40)(faces.flip(-1))
    # a 40 px centre crop of a 48 px face mirrors onto the centre crop of the mirrored face
    assert torch.allclose(flipped, (plain + mirrored) / 2, atol=1e-5)
    assert (flipped - plain).abs().max() > 1e-4  # the mirror image did change the output
    with pytest.raises(ValueError, match="tta must be one of"):
        FaceClassifier(model, 40, tta="sideways")


def test_temperature_keeps_the_decision_and_biases_apply_after_averaging():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0, 0, 0, 0]]).clamp_min(1e-6)
    assert adjust_probabilities(probs, None, 3.0).argmax() == 0
    assert adjust_probabilities(probs, [0, 1.0, 0, 0, 0, 0, 0]).argmax() == 1  # log .3 + 1 > log .5


def test_the_graph_with_flip_views_and_the_prior_correction_computes_what_pytorch_does(tmp_path):
    pytest.importorskip("onnxruntime")
    from fer.training.export import export_onnx
    from fer.models.deploy import onnx_session

    faces = random_faces(64, seed=3)
    classifier = FaceClassifier(tiny_classifier(), 40, temperature=0.9, class_bias=prior_correction(0.6, FER_PRIOR), tta="flip")
    export_onnx(classifier, tmp_path / "flip.onnx", {"tta": "flip"})
    with torch.inference_mode():
        expected = classifier(faces)
    got = torch.from_numpy(onnx_session(tmp_path / "flip.onnx").run(None, {"faces": faces.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    with torch.inference_mode():
        assert not torch.allclose(expected, FaceClassifier(tiny_classifier(), 40, 0.9, prior_correction(0.6, FER_PRIOR))(faces))


def test_int8_keeps_the_chosen_layers_in_float_and_stays_close_to_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from fer.training.export import export_onnx, quantize_int8, read_metadata
    from fer.models.deploy import onnx_session

    faces = random_faces(64, seed=4).numpy()
    fp32 = export_onnx(FaceClassifier(tiny_classifier(), 40, tta="flip"), tmp_path / "m.onnx", {})
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", faces, percentile=99.99, float_leading_convs=1, float_last_dense=True)
    graph = onnx.load(str(int8)).graph
    from_dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    quantized = [n.op_type for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in from_dequantized]
    layers = [n.op_type for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert layers == ["Conv", "Conv", "Gemm", "Gemm"] and quantized == ["Conv", "Gemm"]  # the 2nd conv and the 1st dense
    producer = {out: n.op_type for n in graph.node for out in n.output}
    relus, pools = ([n for n in graph.node if n.op_type == op] for op in ("Relu", "MaxPool"))
    assert len(relus) == 1 and producer[relus[0].input[0]] == "Conv"  # the float conv's; the int8 layers' fold into their ranges
    assert len(pools) == 2 and producer[pools[1].input[0]] == "DequantizeLinear"  # the int8 conv's pool reads its uint8 output
    assert read_metadata(int8)["int8_calibration"] == "percentile 99.99"
    got, expected = (onnx_session(path).run(None, {"faces": faces})[0] for path in (int8, fp32))
    assert abs(got - expected).max() < 0.05 and (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny model trained, then shipped with its class biases and ONNX graph."""
    pytest.importorskip("onnxruntime")
    tmp_path = tmp_path_factory.mktemp("ship")
    root = write_folders(tmp_path / "fer2013", {"Training": 12, "PublicTest": 4})
    run_script("train.py", [*tiny_train_overrides(root), "trainer.max_epochs=2", "data.image_size=40",
                            f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    best = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    result = run_script("ship_model.py", [f"ckpt_path={best}", f"out_dir={tmp_path / 'assets'}", f"data.root={root}",
                                          "training.commit=abc1234", "training.machine=test", "onnx.calibration_size=32",
                                          f"hydra.run.dir={tmp_path / 'ship'}"], cwd=tmp_path)
    return tmp_path / "assets", root, result


def test_ship_stores_the_biases_and_a_graph_made_from_the_checkpoint(shipped):
    assets, _, result = shipped
    card = json.loads((assets / "model_card.json").read_text())
    classifier, checkpoint = load_face_classifier(assets / "emotion_classifier.ckpt")
    assert checkpoint["class_bias"] == list(card["adjustment"]["class_bias"].values())
    assert card["adjustment"]["method"] in ("prior", "bias") and set(card["adjustment"]["two_fold"]) == {"prior", "bias"}
    if card["adjustment"]["method"] == "prior":
        assert checkpoint["class_bias"] == prior_correction(card["adjustment"]["tau"], list(card["adjustment"]["training_prior"].values()))
    assert checkpoint["tta"] == card["public_test"]["tta"] == classifier.tta in ("none", "flip")
    assert f"tta={checkpoint['tta']} adjustment={card['adjustment']['method']}" in result.stdout
    assert classifier.class_bias.tolist() == pytest.approx(checkpoint["class_bias"])
    assert set(card["public_test"]["variants"]) == {"plain", "plain_flip", "adjusted", "adjusted_flip"}
    assert card["onnx"]["precision"] in ("fp32", "int8") and (assets / "emotion_classifier.onnx").is_file()
    candidates = card["onnx"]["int8_candidates"]
    assert set(candidates) == {f"{n} leading convs in float, percentile {p}" for n in (2, 1, 0) for p in ("99.999", "99.99", "99.9")}
    assert card["onnx"]["speed_batch"] == 28
    assert all(f["faces_per_second"] > 0 for f in [card["onnx"]["public_test"]["fp32"], *candidates.values()])
    if card["onnx"]["precision"] == "int8":
        chosen = f"{card['onnx']['float_leading_convs']} leading convs in float, percentile {card['onnx']['calibration_percentile']:g}"
        assert card["onnx"]["public_test"]["int8"] == candidates[chosen] and card["onnx"]["reason"]
        from fer.training.export import read_metadata

        calibration = read_metadata(assets / "emotion_classifier.int8.onnx")["int8_calibration"]
        assert calibration == f"percentile {card['onnx']['calibration_percentile']:g}"
    assert sorted(p.name for p in assets.glob("*.onnx")) == sorted(card["onnx"]["files"])  # the other candidates removed
    assert (assets / "emotion_classifier.int8.onnx").is_file() == (card["onnx"]["precision"] == "int8")
    assert "adjusted_flip" in result.stdout and "int8 candidate, 1 leading convs in float, percentile 99.9: accuracy=" in result.stdout
    assert "model.net.stages=[[8],[16]]" in card["training"]["command"]
    assert card["training"]["commit"] == "abc1234" and card["public_test"]["n"] == 28
    assert "optimizer_states" not in checkpoint
    assert float(classifier.temperature) == pytest.approx(card["calibration"]["temperature"])


def test_runtime_runs_the_shipped_graph_with_the_biases(shipped, caplog):
    assets, _, _ = shipped
    ckpt = assets / "emotion_classifier.ckpt"
    faces = random_faces(64, seed=1)
    biased = torch.tensor(torch.load(ckpt, weights_only=True)["class_bias"])

    card = json.loads((assets / "model_card.json").read_text())
    runtime = load_runtime(ckpt)
    assert runtime.description == f"onnxruntime emotion_classifier.{'int8.' if card['onnx']['precision'] == 'int8' else ''}onnx"
    with torch.inference_mode():
        expected = runtime.classifier(faces)
    got = torch.from_numpy(runtime(faces.numpy()))
    assert got.shape == (64, 7) and torch.allclose(got.sum(1), torch.ones(64), atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.95  # the graph may be int8

    # a checkpoint whose biases force one class: the graph must carry them
    forced = torch.load(ckpt, weights_only=True)
    forced["class_bias"] = (biased + 20 * torch.nn.functional.one_hot(torch.tensor(HAPPY), 7)).tolist()
    torch.save(forced, assets / "forced.ckpt")
    from fer.training.export import main as fer_export

    assert fer_export(["--checkpoint", str(assets / "forced.ckpt"), "-o", str(assets / "forced.onnx")]) == 0
    forced_runtime = load_runtime(assets / "forced.ckpt")
    assert forced_runtime.session is not None
    assert (forced_runtime(faces.numpy()).argmax(1) == HAPPY).all()

    # the graph of another file is not used; nor for other views than its own, nor for the bare net: one info line says why
    shipped_tta = runtime.classifier.tta
    other = "none" if shipped_tta == "flip" else "flip"
    shutil.copy(assets / "emotion_classifier.onnx", assets / "forced.onnx")
    with caplog.at_level(logging.INFO, logger="fer.models.deploy"):
        assert load_runtime(assets / "forced.ckpt").session is None
        assert load_runtime(ckpt, tta=other).session is None
        assert load_runtime(ckpt, adjust=False).session is None
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("classifier runs on PyTorch")] == [
        "classifier runs on PyTorch: forced.onnx was not made from this checkpoint",
        f"classifier runs on PyTorch: tta={other} runs on PyTorch (emotion_classifier.onnx averages the views tta={shipped_tta})",
        "classifier runs on PyTorch: adjust=false runs on PyTorch (the ONNX graph holds the class biases and temperature)"]


def test_without_its_int8_graph_the_runtime_runs_the_fp32_one_and_says_so(shipped, tmp_path, caplog):
    assets, _, _ = shipped
    for name in ("emotion_classifier.ckpt", "emotion_classifier.onnx"):
        shutil.copy(assets / name, tmp_path / name)
    with caplog.at_level(logging.INFO, logger="fer.models.deploy"):
        runtime = load_runtime(tmp_path / "emotion_classifier.ckpt")
    assert runtime.description == "onnxruntime emotion_classifier.onnx"
    assert [r.getMessage() for r in caplog.records if r.name == "fer.models.deploy"] == [
        "classifier runs the fp32 graph emotion_classifier.onnx: no graph emotion_classifier.int8.onnx beside it "
        f"(fer-export --checkpoint {tmp_path / 'emotion_classifier.ckpt'} -o {tmp_path / 'emotion_classifier.onnx'} "
        "--int8 --data <FER-2013 root> makes it)"]


def test_evaluate_applies_the_stored_biases_unless_told_not_to(shipped, tmp_path):
    assets, root, _ = shipped
    forced = torch.load(assets / "emotion_classifier.ckpt", weights_only=True)
    forced["class_bias"] = [20.0 if i == HAPPY else 0.0 for i in range(7)]
    torch.save(forced, tmp_path / "forced.ckpt")
    for adjust in ("true", "false"):
        run_script("evaluate.py", [f"ckpt_path={tmp_path / 'forced.ckpt'}", "split=val", f"data.root={root}", f"adjust={adjust}",
                                   f"hydra.run.dir={tmp_path / adjust}"], cwd=tmp_path)
    adjusted = json.loads((tmp_path / "true" / "metrics.json").read_text())
    plain = json.loads((tmp_path / "false" / "metrics.json").read_text())
    assert [row[HAPPY] for row in adjusted["confusion_matrix"]] == [4] * 7  # every face predicted happy
    assert plain["confusion_matrix"] != adjusted["confusion_matrix"]


def test_the_ship_record_names_a_checkpoint_outside_a_run_or_a_stage_its_pipeline_lacks(tmp_path):
    from omegaconf import OmegaConf

    from fer import FERError
    from fer.training.ship import training_record

    loose = tmp_path / "loose" / "checkpoints" / "best.ckpt"
    with pytest.raises(FERError, match="is not inside a Hydra run folder"):
        training_record(loose, {})

    run = tmp_path / "pipeline_run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"seed": 3, "gan": {"model": {}}}, run / ".hydra" / "config.yaml")
    OmegaConf.save(["experiment=ship_fast120", "seed=3"], run / ".hydra" / "overrides.yaml")
    with pytest.raises(FERError, match=r"has no stage 'classifier' in its config"):
        training_record(run / "classifier" / "checkpoints" / "epoch_001.ckpt", {})

    OmegaConf.save({"seed": 3, "data": {"root": "${paths.fer2013}"},
                    "classifier": {"data": {"balance": "gan", "root": "${data.root}"}, "model": {"x": 1}, "trainer": {}}},
                   run / ".hydra" / "config.yaml")
    record = training_record(run / "classifier" / "checkpoints" / "epoch_001.ckpt", {"wall_minutes": 1.0})
    assert record["command"] == "python scripts/pipeline.py experiment=ship_fast120 seed=3"
    # the stage's folders as the pipeline's `data` gives them, not as interpolations of a key the record lacks
    assert record["config"] == {"seed": 3, "data": {"balance": "gan", "root": "${paths.fer2013}"}, "model": {"x": 1}, "trainer": {}}
    assert record["wall_minutes"] == 1.0


def test_the_fastest_int8_graph_that_keeps_accuracy_ships():
    from fer.training.ship import choose_precision

    reference = {"accuracy": 0.70, "macro_f1": 0.67}
    fp32 = {**reference, "faces_per_second": 1000}
    close_slow = {"accuracy": 0.700, "macro_f1": 0.669, "faces_per_second": 1200}
    close_fast = {"accuracy": 0.699, "macro_f1": 0.668, "faces_per_second": 1500}
    lossy_fastest = {"accuracy": 0.690, "macro_f1": 0.668, "faces_per_second": 3000}
    figures = {"fp32": fp32, 2: close_slow, 1: close_fast, 0: lossy_fastest}
    assert choose_precision(figures, reference, 0.003, 1.0) == (1, "int8 keeps accuracy within 0.003 and runs 1.50x the fp32 graph's faces/s")
    assert choose_precision(figures, reference, 0.003, None)[0] == 2  # untimed: the most accurate that keeps accuracy
    choice, reason = choose_precision(figures, reference, 0.003, 1.6)
    assert choice == "fp32" and "1.50x" in reason
    choice, reason = choose_precision({"fp32": fp32, 0: lossy_fastest}, reference, 0.003, 1.0)
    assert choice == "fp32" and "0: accuracy)" in reason and "macro_f1" not in reason


