"""The training benchmark runs on CPU and reports sane figures."""

from fer.bench.train import bench_train

from conftest import compose_config, tiny_train_overrides, write_folders


def test_bench_train_times_real_steps(tmp_path, capsys):
    root = write_folders(tmp_path / "fer", {"Training": 40, "PublicTest": 2})
    cfg = compose_config("bench_train", tmp_path, [*tiny_train_overrides(root), "bench.warmup=2", "bench.steps=6",
                                                   "trainer.max_epochs=5"])
    result = bench_train(cfg)
    assert result["steps"] == 6 and result["images_per_s"] > 0 and 0 <= result["data_wait_share"] < 1
    assert abs(result["epoch_s"] - 280 / result["images_per_s"]) < 1e-6
    assert "images/s=" in capsys.readouterr().out.strip().splitlines()[-1]
