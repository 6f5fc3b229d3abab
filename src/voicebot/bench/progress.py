"""A progress bar for `voicebot bench` (tqdm, on stderr): one bar over the whole run, measured in estimated seconds,
so its time-left figure is an honest estimate; each phase's real duration is kept for the JSON and the README."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class BenchProgress:
    def __init__(self, phases: dict[str, float], *, enabled: bool = True) -> None:
        """``phases``: name -> estimated seconds, in the order they run (0: skipped)."""
        from tqdm import tqdm

        self.phases = {name: est for name, est in phases.items() if est > 0}
        self.seconds: dict[str, float] = {}
        self.bar = tqdm(total=round(sum(self.phases.values())), unit="s", desc="bench", disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar:24}| {elapsed} elapsed, about {remaining} left "
                                   "{postfix}", leave=True)
        self._done = 0.0  # estimated seconds of the phases that ended
        self._lock = threading.Lock()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        estimate = self.phases.get(name, 0.0)
        self.bar.set_postfix_str(f"[{name}]", refresh=True)
        started = time.monotonic()
        stop = threading.Event()

        def tick() -> None:  # the bar moves while a phase runs, never past that phase's estimate
            while not stop.wait(0.5):
                with self._lock:
                    self._show(self._done + min(estimate * 0.95, time.monotonic() - started))

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            self.seconds[name] = round(time.monotonic() - started, 1)
            with self._lock:
                self._done += estimate
                self._show(self._done)

    def _show(self, position: float) -> None:
        self.bar.n = min(round(position), self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
