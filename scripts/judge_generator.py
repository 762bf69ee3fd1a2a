"""A generator's per-class agreement read by several real-data classifiers:
python scripts/judge_generator.py 'judges=[A.ckpt,B.ckpt]' [gan_ckpt=CKPT] (see conf/judge_generator.yaml)."""

import hydra
from omegaconf import DictConfig

from fer import schema
from fer.cli import exit_on_user_error
from fer.training.judge_generator import judge_generator


@hydra.main(version_base="1.3", config_path="../conf", config_name="judge_generator")
@exit_on_user_error(schema.JudgeGenerator)
def main(cfg: DictConfig) -> None:
    judge_generator(cfg)


if __name__ == "__main__":
    main()
