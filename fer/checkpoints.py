"""Reading checkpoints safely: `weights_only=True`, and one clear error for anything that is not ours."""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fer import ConfigError

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path, required_hparams: Collection[str], what: str) -> dict:
    """The checkpoint dict at `path`, loaded with `weights_only=True`; a ConfigError naming the file
    if it is missing, not loadable, or not `what` (its hyperparameters lack `required_hparams`)."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors of every kind: not a loadable checkpoint
        raise ConfigError(f"{path} is not a checkpoint of this project ({load_failure(path, error)})") from error
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not set(required_hparams) <= set(hparams) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a checkpoint of this project's {what} (its hyperparameters or weights are missing)")
    return checkpoint


def load_failure(path: Path, error: Exception) -> str:
    """Why `torch.load(path, weights_only=True)` failed, in a few words (PyTorch's own message is a
    page about the weights_only default)."""
    if not zipfile.is_zipfile(path):
        return "not a file written by torch.save"
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", str(error), re.S)
    if detail:
        return f"it holds objects that safe (weights_only) loading refuses: {' '.join(detail[1].split())}"
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'unreadable'}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resume_path(ckpt_path: str | None, runs_dir: str | Path, overrides: Sequence[str] = ()) -> str | None:
    """`ckpt_path` as given, or for `last` the newest `<run>/checkpoints/last.ckpt` under `runs_dir`
    of a run started with the same command-line `overrides` (`ckpt_path=...` aside): the killed run
    of this very command. The resumed run then writes into its own new folder."""
    if ckpt_path != "last":
        return ckpt_path
    wanted = same_run_overrides(overrides)
    candidates = sorted((p for p in Path(runs_dir).glob("*/checkpoints/last.ckpt")
                         if same_run_overrides(_saved_overrides(p.parent.parent)) == wanted),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"ckpt_path=last: no run under {runs_dir} was started with the same overrides "
                          f"({' '.join(sorted(wanted)) or 'none'}) and has a checkpoints/last.ckpt to resume")
    log.info("ckpt_path=last: resuming %s", candidates[-1])
    return str(candidates[-1])


def same_run_overrides(overrides: Sequence[str]) -> set[str]:
    return {o for o in overrides if not o.startswith(("ckpt_path=", "+ckpt_path=", "hydra."))}


def _saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else ["<unknown>"]
