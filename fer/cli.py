"""What the entry scripts share: bad input ends the run with one line, not a traceback."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from fer import FERError

T = TypeVar("T")


def exit_on_user_error(stage: Callable[..., T]) -> Callable[..., T]:
    """Turn a `FERError` (also when Hydra's instantiate wraps it) into `error: <message>` and exit 1."""

    @functools.wraps(stage)
    def run(*args, **kwargs) -> T:
        try:
            return stage(*args, **kwargs)
        except Exception as error:
            cause: BaseException | None = error
            while cause is not None and not isinstance(cause, FERError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise SystemExit(f"error: {cause}") from None

    return run
