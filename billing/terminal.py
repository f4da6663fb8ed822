"""What the command line shows a person: help derived from the Settings fields, progress on a terminal, and
errors as one line.

rich is imported only where progress is drawn, so `billing --help` and the server's start stay light.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from billing.core.config import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class CommandError(Exception):
    """A command that cannot do its work: `billing <command>: <message>` on stderr, exit status `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Command(NamedTuple):
    """A subcommand of `billing`: its sentence for `billing --help`, the settings it reads, its options, its run."""

    summary: str
    settings: tuple[str, ...]
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Settings, argparse.Namespace], int]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, without pymongo's topology description."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(", Timeout: ")[0]


# ---- help from the Settings fields ------------------------------------------------------------


def env_var(field: str) -> str:
    """The environment variable of a Settings field: BILLING_REDIS_URL for redis_url."""
    if field not in Settings.model_fields:
        raise KeyError(f"no setting {field!r}")
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def default_text(field: str) -> str:
    """A Settings field's default as a person would write it in the environment."""
    value: Any = Settings.model_fields[field].get_default(call_default_factory=True)
    if value is None or value == {} or value == ():
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path) and value.is_relative_to(PROJECT_ROOT):
        return f"{value.relative_to(PROJECT_ROOT)}/ in the project directory"
    return str(value)


def setting_help(field: str) -> str:
    """`env BILLING_X, default: D` for an option that stands in for a setting."""
    return f"env {env_var(field)}, default: {default_text(field)}"


def settings_epilog(fields: tuple[str, ...] | None = None, title: str = "settings read") -> str:
    """A help section listing settings (all of them when fields is None) with their defaults."""
    names = list(Settings.model_fields) if fields is None else list(fields)
    rows = [(env_var(name), default_text(name)) for name in names]
    width = max(len(variable) for variable, _ in rows) + 2
    lines = [f"{title} (environment, or the file BILLING_CONFIG_FILE names):"]
    lines += [f"  {variable:<{width}}default: {default}" for variable, default in rows]
    return "\n".join(lines)


# ---- progress ---------------------------------------------------------------------------------


def stderr_is_terminal(stream: IO[str] | None = None) -> bool:
    """Progress is drawn only for a person: stderr on a terminal (piped or redirected: nothing)."""
    stream = stream if stream is not None else _stderr()
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _stderr() -> IO[str]:
    import sys

    return sys.stderr


class StepProgress:
    """Steps of long work as progress lines on stderr, drawn only when stderr is a terminal.

    Use it as a context manager and pass it as the progress callback (step, done, total): each new step name gets a line (a bar
    once its total is known, a spinner before), and the steps before it are marked finished.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.shown = stderr_is_terminal(stream)
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if self.shown:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(file=stream if stream is not None else _stderr(), force_terminal=True)
            self._progress = Progress(
                SpinnerColumn(finished_text="done"),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                # Log lines go to the stream captured at logging setup: leave sys.stdout/stderr as they are.
                redirect_stdout=False,
                redirect_stderr=False,
            )

    def __enter__(self) -> StepProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            if kind is None:
                self._finish_all()
            self._progress.stop()

    def __call__(self, step: str, done: int, total: int | None) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(step)
        if task is None:
            self._finish_all()
            task = self._tasks[step] = self._progress.add_task(step, total=total)
        self._progress.update(task, completed=done, total=total)

    def _finish_all(self) -> None:
        assert self._progress is not None
        for task in self._progress.tasks:
            if not task.finished:
                end = max(int(task.completed), int(task.total or 0), 1)
                self._progress.update(task.id, completed=end, total=end)


@contextmanager
def showing(step: str) -> Iterator[None]:
    """One step without counts (a spinner and the time it takes), e.g. a MongoDB aggregation."""
    with StepProgress() as progress:
        progress(step, 0, None)
        yield
