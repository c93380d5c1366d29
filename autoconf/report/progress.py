"""Progress of long work on a terminal (rich): a bar under the lines a job prints, moved by the lines themselves.

The jobs already say what they do, one line at a time (`step 3/20 loss ...` from the trainer, `[2/8] tp2 pp2 ...`
from validate, `[ 12.3s] collectives ...` from the profiler). `Follow` prints each line as it comes and keeps one
live bar below them: a line with a count `k/N` sets the bar to k of N (with the time left), any other line becomes
the bar's caption. Off a terminal nothing is drawn and every line is printed as before.
"""

from __future__ import annotations

import re
import threading

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

COUNTS = (re.compile(r"\bstep (\d+)/(\d+)\b"), re.compile(r"^\s*\[(\d+)/(\d+)\]"))


class Follow:
    """A live progress bar for a job whose lines go through `line()`; a context manager."""

    def __init__(self, console: Console, caption: str, done_offset: int = 0, total: int | None = None):
        """`done_offset`: subtracted from a line's k (validate announces run k when it starts it: k - 1 are done);
        `total`: the count the bar runs to before a line says it."""
        self.console = console
        self.total = total
        self.caption = caption
        self.done_offset = done_offset
        self.live = console.is_terminal
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
                                  TimeRemainingColumn(), console=console, transient=True) if self.live else None
        self._task = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Follow":
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.caption, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        """Prints `text` (above the bar) and moves the bar by what it says."""
        text = text.rstrip("\n")
        with self._lock:
            if self._progress is None:
                print(text, flush=True)
                return
            self._progress.console.print(Text(text), highlight=False, soft_wrap=True)  # (never read as markup)
            for pattern in COUNTS:
                match = pattern.search(text)
                if match:
                    done, total = int(match.group(1)) - self.done_offset, int(match.group(2))
                    self._progress.update(self._task, completed=max(done, 0), total=total)
                    return
            if text.strip():
                self._progress.update(self._task, description=f"{self.caption}: {text.strip()[:40]}")

    def relay(self, stream) -> threading.Thread:
        """Starts a thread that passes every line of the binary `stream` (a child's stdout) to `line()`."""
        def pump() -> None:
            for raw in iter(stream.readline, b""):
                self.line(raw.decode(errors="replace"))
            stream.close()

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        return thread
