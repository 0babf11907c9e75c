"""Capped exponential backoff with jitter; the random source is injectable for tests."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``next()`` returns the delay to wait now (seconds) and doubles the base up to ``cap``.

    The delay is ``base × U(jitter_low, 1.0)``; ``reset()`` goes back to ``initial``.
    """

    def __init__(
        self,
        initial: float = 1.0,
        cap: float = 60.0,
        *,
        jitter_low: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter_low = jitter_low
        self._rand = rand
        self._base = initial

    @property
    def base(self) -> float:
        return self._base

    def next(self) -> float:
        delay = self._base * (self.jitter_low + (1.0 - self.jitter_low) * self._rand())
        self._base = min(self._base * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._base = self.initial
