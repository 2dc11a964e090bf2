"""A progress bar on stderr, by input bytes read, for long report runs.

Why bytes: captures differ wildly in size, so "3 of 10 files" says little; the engine
reports raw bytes consumed through its ``on_progress`` callback, and the total is the
sum of the input file sizes (compressed size for .gz, which is what is read). The bar
appears only when stderr is a terminal and the inputs are large enough for it to matter.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: Inputs smaller than this finish too fast for a bar to help.
MIN_BYTES = 32 * 1024 * 1024


class ByteProgress:
    """Context manager: ``advance(n)`` as bytes are read; a no-op when disabled."""

    def __init__(self, paths: list[str], enabled: bool = True, min_bytes: int = MIN_BYTES,
                 console: Any = None) -> None:
        self.total = sum(_size(p) for p in paths)
        self.enabled = enabled and self.total >= min_bytes and (console is not None or sys.stderr.isatty())
        self.done = 0
        self._progress: Any = None
        self._task: Any = None
        self._console = console

    def __enter__(self) -> ByteProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            console = self._console or Console(stderr=True)
            self._progress = Progress(TextColumn("reading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("read", total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
