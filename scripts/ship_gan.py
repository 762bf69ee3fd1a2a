"""Ship a GAN run's EMA generator as the default generator:
python scripts/ship_gan.py ckpt_path=CKPT training.commit=SHA training.machine=... (see conf/ship_gan.yaml)."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.ship_gan import ship_generator


@hydra.main(version_base="1.3", config_path="../conf", config_name="ship_gan")
@exit_on_user_error(schema.ShipGan)
def main(cfg: DictConfig) -> None:
    ship_generator(cfg)


if __name__ == "__main__":
    main()
