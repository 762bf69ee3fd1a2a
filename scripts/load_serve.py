"""Load test of fer-serve: python scripts/load_serve.py [clients=N] [seconds=S] [url=URL] (see conf/load_serve.yaml)."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.bench.serve import load_serve
from fer.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="load_serve")
@exit_on_user_error(schema.LoadServe)
def main(cfg: DictConfig) -> None:
    load_serve(cfg)


if __name__ == "__main__":
    main()
