"""Prediction speed (classifier and end to end): python scripts/bench_predict.py [overrides]."""

import hydra
from omegaconf import DictConfig

from fer.bench.predict import bench_predict
from fer import schema
from fer.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench_predict")
@exit_on_user_error(schema.BenchPredict)
def main(cfg: DictConfig) -> None:
    bench_predict(cfg)


if __name__ == "__main__":
    main()
