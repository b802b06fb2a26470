"""Wall-clock seconds per stage of a job, for the reports that print them."""
from __future__ import annotations

import time


class StageClock:
    """``lap(name)`` adds the seconds since the previous lap to ``seconds[name]`` (a stage may recur)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 1)
        self._last = now

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 1)
