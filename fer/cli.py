"""What the entry scripts share: a typed check of the config before any work, one line (not a
traceback) for bad input, and Lightning's console kept to what our users need."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from typing import Callable, TypeVar

from omegaconf import DictConfig

from fer import ConfigError, FERError
from fer.schema import validate

T = TypeVar("T")

LIGHTNING_NOISE = ("💡 Tip:", "TPU available:", "HPU available:", "Loading `train_dataloader` to estimate")
"""Lightning info lines that say nothing about our runs (its ads, accelerators we never have)."""


def quiet_lightning() -> None:
    """Drop Lightning's tips and empty accelerator lines, and the deprecation warning its own code
    triggers in torch (`_pytree`: not ours to fix); every other warning still shows."""
    class DropNoise(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(LIGHTNING_NOISE)

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):  # its info lines
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in logger.filters):
            logger.addFilter(DropNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def exit_on_user_error(schema: type | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate an entry's main(cfg): check `cfg` against `schema` (fer.schema) before any work, and
    turn a `FERError` (also when Hydra's instantiate wraps it) into `error: <message>` on stderr,
    exit code 2 for a bad config value or argument, 1 for other bad input."""

    def decorate(stage: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(stage)
        def run(cfg: DictConfig, *args, **kwargs) -> T:
            quiet_lightning()
            try:
                if schema is not None:
                    validate(cfg, schema)
                return stage(cfg, *args, **kwargs)
            except Exception as error:
                cause: BaseException | None = error
                while cause is not None and not isinstance(cause, FERError):
                    cause = cause.__cause__
                if cause is None:
                    raise
                print(f"error: {cause}", file=sys.stderr)
                raise SystemExit(2 if isinstance(cause, ConfigError) else 1) from None

        return run

    return decorate
