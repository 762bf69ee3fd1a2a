"""Synthetic faces from the shipped generator or a GAN checkpoint: python scripts/generate.py [gan_ckpt=CKPT] [overrides]
(see conf/generate.yaml); writes <run>/synthetic/<class>/*.png and manifest.csv."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.generate import generate


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
@exit_on_user_error(schema.Generate)
def main(cfg: DictConfig) -> None:
    report = generate(cfg)
    print(f"wrote {report['total']} images to {report['folder']} (manifest: {report['manifest']})")


if __name__ == "__main__":
    main()
