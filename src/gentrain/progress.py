"""Progress a person can follow anywhere: a tqdm bar on a terminal, and in redirected output (`| tee`, nohup,
SLURM logs, joblib workers) a log line at most every `interval` seconds instead of carriage-return frames.

Every long loop of gentrain goes through `Progress` (training, evaluation, decoding, downloads, FID features,
sampling), so they all follow the same rule and name what they compute.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Iterable, Iterator, Mapping, Optional, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("gentrain.progress")

T = TypeVar("T")
DEFAULT_INTERVAL = 30.0  # seconds between progress lines in redirected output


def on_terminal() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """4s, 3m12s, 2h05m."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts work done out of `total` (None: unknown).

    On a terminal (and when `bar`) a tqdm bar; otherwise a line '<desc>: 1,200/4,220 <unit> (28%), <postfix>,
    310 <unit>/s, ETA 9s' through the logger, at most every `interval` seconds. With `lines_on_update=False`
    lines come only from set_postfix() (the trainer's rule: at its logging steps, if `interval` has passed).
    """

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", *, bar: bool = True, initial: int = 0,
                 interval: float = DEFAULT_INTERVAL, lines_on_update: bool = True, leave: bool = False):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = self._start_n = initial
        self.lines_on_update = lines_on_update
        self.postfix: dict[str, str] = {}
        self._started = self._last_line = time.monotonic()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave) \
            if bar and on_terminal() else None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines_on_update:
            self._maybe_line()

    def set_postfix(self, values: Mapping[str, str], *, line: bool = True) -> None:
        """New numbers for the bar; without a bar, a line when `line` and `interval` has passed."""
        self.postfix = dict(values)
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)
        elif line:
            self._maybe_line()

    def rate(self) -> float:
        return (self.n - self._start_n) / max(time.monotonic() - self._started, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        done = f"{self.n:,}" if self.total is None else \
            f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%)"
        parts = [f"{self.desc}: {done}", *(f"{k} {v}" for k, v in self.postfix.items())]
        if rate > 0:  # slow work in seconds per unit: "0.0 batch/s" says nothing
            parts.append(f"{rate:,.1f} {self.unit}/s" if rate >= 1 else f"{1 / rate:,.1f} s/{self.unit}")
            if self.total is not None:
                parts.append(f"ETA {duration(max(0, self.total - self.n) / rate)}")
        return ", ".join(parts)

    def _maybe_line(self) -> None:
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            log.info("%s", self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "it", *, bar: bool = True,
          interval: float = DEFAULT_INTERVAL) -> Iterator[T]:
    """Iterate over `items` with a Progress."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, bar=bar, interval=interval) as progress:
        for item in items:
            yield item
            progress.update()
