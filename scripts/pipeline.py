"""GAN -> synthetic faces -> classifier -> evaluation in one run: python scripts/pipeline.py [overrides]
(see conf/pipeline.yaml; `make train` runs it)."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.pipeline import pipeline


@hydra.main(version_base="1.3", config_path="../conf", config_name="pipeline")
@exit_on_user_error(schema.Pipeline)
def main(cfg: DictConfig) -> float:
    summary = pipeline(cfg)
    return summary["splits"]["val"][cfg.optimized_metric] if summary["splits"].get("val") else float("nan")


if __name__ == "__main__":
    main()
