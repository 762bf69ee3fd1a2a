"""Sample and augmentation grids: python scripts/visualize.py [split=val] [data.align=true]."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.reports.figures import visualize


@hydra.main(version_base="1.3", config_path="../conf", config_name="visualize")
@exit_on_user_error(schema.Visualize)
def main(cfg: DictConfig) -> None:
    visualize(cfg)


if __name__ == "__main__":
    main()
