"""Reading checkpoints safely: `weights_only=True`, and one clear error for anything that is not ours."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

import torch

from fer import FERError


def read_checkpoint(path: str | Path, required_hparams: Collection[str], what: str) -> dict:
    """The checkpoint dict at `path`, loaded with `weights_only=True`; a FERError naming the file if
    it is missing, not loadable, or not `what` (its hyperparameters lack `required_hparams`)."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FERError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors of every kind: not a loadable checkpoint
        raise FERError(f"{path} is not a loadable checkpoint: {str(error).splitlines()[0]}") from error
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not set(required_hparams) <= set(hparams) or "state_dict" not in checkpoint:
        raise FERError(f"{path} is not a checkpoint of this project's {what}")
    return checkpoint


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
