"""Train the class-conditional DCGAN: python scripts/train_gan.py [overrides] (see conf/train_gan.yaml)."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.train_gan import train_gan


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_gan")
@exit_on_user_error(schema.TrainGan)
def main(cfg: DictConfig) -> None:
    train_gan(cfg)


if __name__ == "__main__":
    main()
