"""The pipeline: train the GAN (or reuse `gan.ckpt_path`) -> generate synthetic faces -> train the
classifier with them added to Training only -> evaluate, all in one run folder:

    <run>/gan/          GAN checkpoints, samples.png, quality.json, TensorBoard
    <run>/synthetic/    <class>/*.png and manifest.csv
    <run>/classifier/   classifier checkpoints, curves.png, TensorBoard
    <run>/evaluate/<split>/   metrics.json, report and figures of the best classifier checkpoint
    <run>/metrics.json  the run's summary (what the ablation table reads)

The GAN and generation stages run only for `classifier.data.balance=gan`; the other balance options
train the classifier on the real data alone, so one config sweeps all of them.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from fer import EMOTIONS, FERError
from fer.training.evaluate import evaluate
from fer.training.generate import generate
from fer.training.train import best_checkpoint, fit
from fer.training.train_gan import train_gan

log = logging.getLogger(__name__)


def stage_config(cfg: DictConfig, subtree: str, output_dir: Path, task_name: str) -> DictConfig:
    """The config a stage function expects (its own `data`, `model`, `trainer`, ... at the root),
    cut from `cfg[subtree]` and resolved with `paths.output_dir` set to the stage's folder, so the
    subtree's `${paths.output_dir}` interpolations (checkpoints, loggers) land there."""
    full = copy.deepcopy(cfg)
    with open_dict(full):
        full.paths.output_dir = str(output_dir)
    node = OmegaConf.to_container(full[subtree], resolve=True)
    paths = OmegaConf.to_container(full.paths, resolve=True)
    return OmegaConf.create({"task_name": task_name, "seed": cfg.seed, **node, "paths": paths})


def compose_stage(name: str) -> DictConfig:
    """Another entry's config (e.g. conf/evaluate.yaml) as Hydra composes it without overrides,
    from the config directory of this run."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name)
    source = next(s for s in HydraConfig.get().runtime.config_sources if s.provider == "main")
    with initialize_config_dir(config_dir=source.path.removeprefix("file://"), version_base="1.3"):
        return compose(config_name=name)


def arm_name(cfg: DictConfig) -> str:
    """The run's row in the ablation table: the balance option, and for `gan` how much was generated
    and whether the confidence filter kept it."""
    if cfg.classifier.data.balance != "gan":
        return cfg.classifier.data.balance
    gen = cfg.generate
    amount = (f"{gen.target_share:g} x {gen.get('target_of', 'largest')}" if gen.n_per_class is None
              else f"n={OmegaConf.to_container(gen.n_per_class) if isinstance(gen.n_per_class, DictConfig) else gen.n_per_class}")
    return f"gan ({amount})" + (f" + filter {gen.filter_min_conf:g}" if gen.get("filter_min_conf") is not None else "")


def pipeline(cfg: DictConfig) -> dict:
    """Run the stages of `cfg` (conf/pipeline.yaml) and return the run's summary."""
    out = Path(cfg.paths.output_dir)
    balance = cfg.classifier.data.balance
    summary: dict = {"balance": balance, "arm": arm_name(cfg), "seed": cfg.seed, "seconds": {}}
    classifier_cfg = stage_config(cfg, "classifier", out / "classifier", "classifier")

    if balance == "gan":
        started = time.perf_counter()
        if cfg.gan.get("ckpt_path"):
            gan_ckpt = str(cfg.gan.ckpt_path)
            log.info("reusing the GAN checkpoint %s (gan.ckpt_path): no GAN training in this run", gan_ckpt)
        else:
            gan_cfg = stage_config(cfg, "gan", out / "gan", "gan")
            with open_dict(gan_cfg):
                gan_cfg.ckpt_path = None  # in the pipeline, gan.ckpt_path means "reuse", never "resume"
            result = train_gan(gan_cfg)
            gan_ckpt = result["ckpt_path"]
            if not gan_ckpt:
                raise FERError(f"the GAN stage saved no checkpoint in {out / 'gan'} (gan.callbacks)")
            summary["gan_quality"] = result["quality"]
        summary["seconds"]["gan"] = round(time.perf_counter() - started, 1)

        started = time.perf_counter()
        generate_cfg = OmegaConf.create({
            "seed": cfg.seed,
            "gan_ckpt": gan_ckpt,
            "data": {"root": classifier_cfg.data.root, "cache_dir": classifier_cfg.data.cache_dir},
            "generate": OmegaConf.to_container(cfg.generate, resolve=True),
            "paths": {"output_dir": str(out)},
        })
        report = generate(generate_cfg)
        summary["gan_ckpt"], summary["synthetic"] = gan_ckpt, report
        summary["seconds"]["generate"] = round(time.perf_counter() - started, 1)
        if report["total"] > 0:
            with open_dict(classifier_cfg):
                classifier_cfg.data.extra_train_dirs = [*classifier_cfg.data.extra_train_dirs, report["folder"]]
        else:
            raise FERError("generate: no synthetic image was kept (generate.n_per_class / target_share / filter_min_conf), "
                           "so data.balance=gan has nothing to add")

    started = time.perf_counter()
    val_metrics, datamodule, trainer = fit(classifier_cfg)
    summary["seconds"]["classifier"] = round(time.perf_counter() - started, 1)
    summary["train_pflop"] = json.loads((out / "classifier" / "metrics.json").read_text())["train_pflop"]
    train_split = datamodule.splits["train"]
    summary["train_images"] = len(train_split)
    summary["train_class_counts"] = dict(zip(EMOTIONS, train_split.class_counts().tolist()))
    summary["val_images"] = len(datamodule.splits["val"])
    summary["best_checkpoint"] = best = best_checkpoint(trainer) or trainer.checkpoint_callback.last_model_path
    summary["val_selected"] = val_metrics

    summary["splits"] = {}
    for split in cfg.evaluate.splits:
        started = time.perf_counter()
        evaluate_cfg = compose_stage("evaluate")  # conf/evaluate.yaml, whatever keys it has
        with open_dict(evaluate_cfg):
            evaluate_cfg.paths.output_dir = str(out / "evaluate" / split)
        evaluate_cfg = OmegaConf.merge(evaluate_cfg, {
            "ckpt_path": best,
            "split": split,
            **{k: v for k, v in OmegaConf.to_container(cfg.evaluate, resolve=True).items() if k != "splits"},
            "data": {key: classifier_cfg.data[key] for key in ("root", "cache_dir", "test_dir", "eval_batch_size")},
            "device": "cuda" if classifier_cfg.trainer.accelerator in ("gpu", "cuda") else "cpu",
        })
        try:
            metrics = evaluate(evaluate_cfg)
        except FERError as error:
            if split == "test" and not classifier_cfg.data.test_dir and "missing" in str(error):
                log.warning("evaluate: %s; the test split is skipped", error)
                summary["splits"][split] = None
                continue
            raise
        summary["splits"][split] = {k: metrics[k] for k in ("source", "n", "accuracy", "macro_f1", "per_class")}
        summary["seconds"][f"evaluate_{split}"] = round(time.perf_counter() - started, 1)

    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    log.info("pipeline done: %s", {s: m and round(m["accuracy"], 4) for s, m in summary["splits"].items()})
    return summary
