"""The one progress bar of long batch jobs (prepare, embed, infer): count, elapsed, ETA, on stderr.

On a terminal it is a live rich bar. Otherwise (a log file, a pipe, Slurm, nohup) a live bar would
show nothing until the end, so it writes plain lines instead: each task's count, elapsed time and
ETA every PLAIN_EVERY_S seconds, a last line when the job ends, and every `note` (one per finished
item, e.g. each video) as it comes.
"""

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, Task, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

PLAIN_EVERY_S = 30.0


class JobProgress(Progress):
    """rich's Progress, with plain lines where stderr is not a terminal."""

    def __init__(self, *columns, plain_every_s: float = PLAIN_EVERY_S, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self.plain = not self.disable and not self.console.is_terminal
        if self.plain:  # the live display would print its last frame at the end: our own lines instead
            self.live.transient = True
        self.plain_every_s = plain_every_s
        self._last_lines = time.monotonic()

    def note(self, text: str) -> None:
        """A line about one finished item: above the live bar, or as it is in a log."""
        if not self.disable:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self.plain and time.monotonic() - self._last_lines >= self.plain_every_s:
            self._print_lines()

    def stop(self) -> None:
        if not self.plain:
            super().stop()
            return
        self.live.stop()  # not Progress.stop: it ends a log with an empty line
        if any(task.completed for task in self.tasks):
            self._print_lines()

    def _print_lines(self) -> None:
        self._last_lines = time.monotonic()
        for task in self.tasks:
            if task.visible:
                self.note(_plain_line(task))


def _plain_line(task: Task) -> str:
    total = f"/{task.total:.0f}" if task.total is not None else ""
    line = f"{task.description}: {task.completed:.0f}{total}, {_clock(task.elapsed or 0)} elapsed"
    if task.finished:
        return line
    return line + (f", ETA {_clock(task.time_remaining)}" if task.time_remaining is not None else "")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_bar(enabled: bool = True, plain_every_s: float = PLAIN_EVERY_S) -> JobProgress:
    return JobProgress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, plain_every_s=plain_every_s,
    )
