"""Train the emotion classifier: python scripts/train.py [overrides] (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error(schema.Train)
def main(cfg: DictConfig) -> float:
    return train(cfg)[cfg.optimized_metric]  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
