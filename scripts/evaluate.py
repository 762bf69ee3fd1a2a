"""Score a checkpoint: python scripts/evaluate.py ckpt_path=CKPT [split=val] [data.test_dir=FOLDER]."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exit_on_user_error(schema.Evaluate)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
