"""The progress bar while a measurement runs (rich, on stderr), fed by a thread that polls the
runner's finished-request counters; nothing is drawn when rich is missing or output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Progress"]

POLL_S = 0.1


class Progress:
    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        console = Console(stderr=True)
        if not console.is_terminal and not sys.stderr.isatty():
            return
        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[measure]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextlib.contextmanager
    def step(
        self, label: str, count: int | None, duration_s: float, done: Callable[[], int]
    ) -> Iterator[None]:
        """A bar for one measurement: by requests finished when ``count`` is set, else by seconds."""
        if self._progress is None:
            yield
            return
        total = count if count is not None else max(int(duration_s * 10), 1)
        task = self._progress.add_task(label, total=total, measure="")
        start_done, start = done(), time.monotonic()
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(POLL_S):  # ends when the step does
                finished = done() - start_done
                elapsed = time.monotonic() - start
                advanced = finished if count is not None else min(int(elapsed * 10), total)
                self._progress.update(
                    task, completed=advanced, measure=_measure(finished, count, elapsed, duration_s)
                )

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            finished = done() - start_done
            elapsed = time.monotonic() - start
            self._progress.update(
                task, completed=total, measure=_measure(finished, count, elapsed, duration_s)
            )


def _measure(finished: int, count: int | None, elapsed_s: float, duration_s: float) -> str:
    if count is not None:
        return f"{finished}/{count} requests"
    return f"{min(elapsed_s, duration_s):.1f}/{duration_s:.1f} s, {finished} requests"
