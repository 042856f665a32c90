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
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        console = Console(stderr=True)
        if not console.is_terminal and not sys.stderr.isatty():
            return
        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[done]} done"),
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
        task = self._progress.add_task(label, total=total, done=0)
        start_done, start = done(), time.monotonic()
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(POLL_S):  # ends when the step does
                finished = done() - start_done
                advanced = finished if count is not None else min(int((time.monotonic() - start) * 10), total)
                self._progress.update(task, completed=advanced, done=finished)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            self._progress.update(task, completed=total, done=done() - start_done)
