"""Training images/s, epoch time and data-wait share: python scripts/bench_train.py [overrides]."""

import hydra
from omegaconf import DictConfig

from fer.bench.train import bench_train
from fer import schema
from fer.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench_train")
@exit_on_user_error(schema.BenchTrain)
def main(cfg: DictConfig) -> None:
    bench_train(cfg)


if __name__ == "__main__":
    main()
