"""Evaluation with test-time augmentation and ensembles, on tiny synthetic models."""

from __future__ import annotations

import json

import pytest
import torch

from fer import FERError
from fer.data.augment import center_crop, to_float
from fer.data.fer2013 import load_split
from fer.training.evaluate import evaluate, score
from fer.models.classifier import EmotionClassifier

from conftest import compose_config


def tiny_checkpoint(path, seed: int, image_size: int) -> EmotionClassifier:
    """A randomly initialised classifier saved as training saves it (its crop size included)."""
    torch.manual_seed(seed)
    model = EmotionClassifier(net={"_target_": "fer.models.nets.ConvNet", "stages": [[4]], "dense": 8, "dropout": 0.0},
                              optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(),
                "datamodule_hyper_parameters": {"image_size": image_size, "batch_size": 8, "tta": "none"}}, path)
    # (batch_size and an option of older versions, tta, are saved too: evaluation takes only the preprocessing)
    return model.eval()


def evaluate_config(tmp_path, root, ckpt_path: str, tta: str):
    return compose_config("evaluate", tmp_path, [f"ckpt_path={ckpt_path}", f"data.root={root}", "split=val", f"tta={tta}"])


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_an_ensemble_averages_its_members_tta_probabilities(fer_folders, tmp_path, tta):
    # two members that crop differently: each is fed the faces as it was trained
    a, b = tiny_checkpoint(tmp_path / "a.ckpt", 0, 48), tiny_checkpoint(tmp_path / "b.ckpt", 1, 40)
    metrics = evaluate(evaluate_config(tmp_path, fer_folders, f"[{tmp_path / 'a.ckpt'},{tmp_path / 'b.ckpt'}]", tta))

    val = load_split(fer_folders, "val", tmp_path / "cache")
    faces = to_float(val.images)
    with torch.no_grad():
        def probs(model, size):
            views = [center_crop(faces, size)] + ([center_crop(faces, size).flip(-1)] if tta == "flip" else [])
            return torch.stack([model(v).softmax(1) for v in views]).mean(0)
        member_a, member_b = probs(a, 48), probs(b, 40)
    expected = score((member_a + member_b) / 2, val.labels)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"] and metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert [m["accuracy"] for m in metrics["members"]] == pytest.approx([score(p, val.labels)["accuracy"] for p in (member_a, member_b)])
    assert member_a.argmax(1).tolist() != member_b.argmax(1).tolist()  # the average is not one member's answer

    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["tta"] == tta and [m["checkpoint"] for m in written["members"]] == [str(tmp_path / n) for n in ("a.ckpt", "b.ckpt")]


def test_tencrop_averages_ten_views_and_needs_a_crop(fer_folders, tmp_path):
    model = tiny_checkpoint(tmp_path / "a.ckpt", 0, 40)
    metrics = evaluate(evaluate_config(tmp_path, fer_folders, str(tmp_path / "a.ckpt"), "tencrop"))
    val = load_split(fer_folders, "val", tmp_path / "cache")
    faces = to_float(val.images)
    crops = [faces[..., y : y + 40, x : x + 40] for y in (0, 4, 8) for x in (0, 4, 8) if (y == x == 4) or 4 not in (y, x)]
    with torch.no_grad():
        expected = torch.stack([model(v).softmax(1) for c in crops for v in (c, c.flip(-1))]).mean(0)
    assert metrics["confusion_matrix"] == score(expected, val.labels)["confusion_matrix"]

    tiny_checkpoint(tmp_path / "full.ckpt", 0, 48)
    with pytest.raises(FERError, match=r"full.ckpt: tta=tencrop .* data.image_size < 48"):
        evaluate(evaluate_config(tmp_path, fer_folders, str(tmp_path / "full.ckpt"), "tencrop"))
