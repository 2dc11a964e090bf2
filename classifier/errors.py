"""User-facing errors and the per-run error log.

Why a log and not exceptions alone: one bad capture must not stop a run over many.
Readers record what went wrong (file, byte offset, what) and carry on with the next
input; the front ends print the messages and turn them into the exit status
(0 clean, 1 some input had errors, 2 usage error).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


class VpnidError(Exception):
    """An error meant for the user: printed as one line, no traceback."""

    exit_code = 1


class UsageError(VpnidError):
    """Bad command-line usage or options (exit status 2)."""

    exit_code = 2


@dataclass(frozen=True)
class InputProblem:
    """One problem found in one input: where it is and what was wrong."""

    path: str
    offset: int | None
    message: str
    fatal: bool = True  # True: the rest of this input could not be read

    def __str__(self) -> str:
        where = f"{self.path}" + (f" at byte {self.offset}" if self.offset is not None else "")
        return f"{where}: {self.message}"


@dataclass
class ErrorLog:
    """Collects input problems; prints them at most ``max_per_file`` times per file."""

    max_per_file: int = 20
    problems: list[InputProblem] = field(default_factory=list)
    quiet: bool = False
    #: warnings of one kind printed per run; the rest are counted (a directory of 200
    #: headers-only captures would otherwise print 200 lines above the summary)
    max_per_kind: int = 5
    _counts: dict[str, int] = field(default_factory=dict)
    _kinds: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, offset: int | None, message: str, *, fatal: bool = True) -> None:
        problem = InputProblem(str(path), offset, message, fatal)
        self.problems.append(problem)
        n = self._counts.get(problem.path, 0) + 1
        self._counts[problem.path] = n
        if self.quiet:
            return
        if n <= self.max_per_file:
            print(f"vpnid: error: {problem}", file=sys.stderr)
        elif n == self.max_per_file + 1:
            print(f"vpnid: error: {problem.path}: more problems, not shown", file=sys.stderr)

    def warn(self, path: str, message: str, kind: str | None = None) -> None:
        """A warning does not change the exit status (e.g. a skipped unknown link type).

        Warnings given a ``kind`` print ``max_per_kind`` times per run, then once more to say
        that further inputs had the same problem.
        """
        if kind is not None:
            n = self._kinds[kind] = self._kinds.get(kind, 0) + 1
            if n > self.max_per_kind:
                if n == self.max_per_kind + 1 and not self.quiet:
                    print(f"vpnid: warning: more inputs with {kind}, not shown", file=sys.stderr)
                return
        if not self.quiet:
            print(f"vpnid: warning: {path}: {message}", file=sys.stderr)

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    @property
    def exit_status(self) -> int:
        return 1 if self.problems else 0
