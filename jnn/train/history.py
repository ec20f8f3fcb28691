"""Per-epoch history files and the epoch progress bar."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pathlib

from jnn.io import atomic_write

__all__ = ["HistoryWriter", "progress_bar"]


class HistoryWriter:
    """Writes the whole history to ``path`` (``.csv`` or ``.jsonl``) after each epoch, atomically.

    An existing file at ``path`` is never overwritten: the writer refuses it at construction.
    """

    def __init__(self, path):
        self.path = pathlib.Path(os.fspath(path))
        if self.path.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"HistoryFile: path must end in .csv or .jsonl, got {path}")
        if self.path.exists():
            raise FileExistsError(f"HistoryFile: {path} already exists; choose another path")
        blocker = next((p for p in [self.path.parent, *self.path.parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise NotADirectoryError(f"HistoryFile: {path} cannot be written: {blocker} is a file, not a directory")
        if blocker is not None and not os.access(blocker, os.W_OK):
            raise PermissionError(f"HistoryFile: {path} cannot be written: {blocker} is not writable")
        self._started = False

    def write(self, history: dict[str, list]) -> None:
        keys = list(history)
        rows = [dict(zip(keys, values)) for values in zip(*history.values())]
        if self.path.suffix == ".jsonl":
            text = "".join(json.dumps(row) + "\n" for row in rows)
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
            text = buffer.getvalue()
        atomic_write(self.path, text, overwrite=self._started)
        self._started = True


class _NoBar:
    def advance(self, logs):
        pass


class _RichBar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, logs):
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "time")
        self.progress.update(self.task, advance=1, description=shown)


@contextlib.contextmanager
def progress_bar(epochs: int, *, enabled: bool = True):
    """A rich progress bar over epochs showing the latest metrics; a no-op when disabled or
    when rich is not installed."""
    try:
        import rich.progress
    except ImportError:
        enabled = False
    if not enabled:
        yield _NoBar()
        return
    columns = [rich.progress.TextColumn("epoch {task.completed}/{task.total}"), rich.progress.BarColumn(),
               rich.progress.TextColumn("{task.description}"), rich.progress.TimeElapsedColumn()]
    with rich.progress.Progress(*columns, transient=True) as progress:
        yield _RichBar(progress, progress.add_task("", total=epochs))
