"""Shared fixtures: small synthetic FER-2013 copies in both layouts, composed Hydra configs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from fer import EMOTIONS
from fer.data.fer2013 import CSV_EMOTIONS

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
REAL_FER2013 = Path(os.environ.get("FER2013_ROOT", REPO / "data" / "fer2013"))

# The real dataset's size, as its README gives it.
REAL_COUNTS = {
    "train": [3995, 436, 4097, 7215, 4965, 4830, 3171],
    "val": [467, 56, 496, 895, 607, 653, 415],
}


def face(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 uint8 image whose class is its mean brightness: learnable under any geometric
    augmentation, and different in every pixel from the next one."""
    base = 30 + label * 32
    return np.clip(rng.normal(base, 8, size=(48, 48)), 0, 255).astype(np.uint8)


def write_folders(root: Path, per_class: dict[str, int], suffix: str = ".png", seed: int = 0) -> Path:
    """Kaggle layout: train/<class>/Training_*, test/<class>/{PublicTest,PrivateTest}_*.
    `per_class` maps a usage (Training, PublicTest, PrivateTest) to images per class."""
    rng = np.random.default_rng(seed)
    for usage, count in per_class.items():
        folder = root / ("train" if usage == "Training" else "test")
        for label, name in enumerate(EMOTIONS):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(face(label, rng)).save(folder / name / f"{usage}_{label}{i:04d}{suffix}")
    return root


def write_csv(path: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """The original fer2013.csv (emotion,pixels,Usage), labels in the CSV's own order."""
    rng = np.random.default_rng(seed)
    rows = ["emotion,pixels,Usage"]
    for usage, count in per_class.items():
        for label, name in enumerate(EMOTIONS):
            for _ in range(count):
                pixels = " ".join(map(str, face(label, rng).ravel()))
                rows.append(f'{CSV_EMOTIONS.index(name)},"{pixels}",{usage}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def read_pixels(path: Path) -> np.ndarray:
    """An image file's pixels (a writable copy; the file is closed)."""
    with Image.open(path) as image:
        return np.array(image)


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The rows of a generated folder's manifest.csv."""
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


SMALL = {"Training": 12, "PublicTest": 4, "PrivateTest": 4}


@pytest.fixture
def fer_folders(tmp_path) -> Path:
    return write_folders(tmp_path / "fer2013", SMALL)


@pytest.fixture
def fer_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "fer2013csv" / "fer2013.csv", SMALL)


@pytest.fixture
def real_fer2013() -> Path:
    if not (REAL_FER2013 / "train").is_dir():
        pytest.skip(f"the real FER-2013 is not at {REAL_FER2013} (set FER2013_ROOT)")
    return REAL_FER2013


def compose_config(name: str, tmp_path: Path, overrides: list[str] = ()) -> DictConfig:
    """A config as the Hydra entry would compose it, with its run folder in `tmp_path`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def tiny_train_overrides(root: Path) -> list[str]:
    """A run on the synthetic data that takes seconds on a CPU."""
    return [
        f"data.root={root}",
        "data.batch_size=8",
        "data.eval_batch_size=32",
        "model.net.stages=[[8],[16]]",
        "model.net.dense=16",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]


def run_script(script: str, args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run an entry script as a user would, in `cwd` (where logs/ and data/cache/ then go)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
