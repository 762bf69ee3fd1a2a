"""Ship a checkpoint as the default model: python scripts/ship_model.py ckpt_path=CKPT training.commit=SHA training.machine=..."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.ship import ship_model


@hydra.main(version_base="1.3", config_path="../conf", config_name="ship_model")
@exit_on_user_error(schema.Ship)
def main(cfg: DictConfig) -> None:
    ship_model(cfg)


if __name__ == "__main__":
    main()
