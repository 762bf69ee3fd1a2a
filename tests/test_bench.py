"""The training benchmark runs on CPU and reports sane figures; the GPU check runs in its CPU mode."""

import os
import re
import subprocess
import sys

from conftest import REPO, compose_config, tiny_train_overrides, write_folders

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
