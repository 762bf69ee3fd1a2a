"""Time left, said one way everywhere: the aligner's and the training run's measured projections."""

from __future__ import annotations

import time
from datetime import timedelta


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    return str(timedelta(seconds=round(seconds)))


def time_left(seconds: float) -> str:
    """'about 0:07:12 to go (ETA 06:35)'."""
    return f"about {clock(seconds)} to go (ETA {time.strftime('%H:%M', time.localtime(time.time() + seconds))})"
