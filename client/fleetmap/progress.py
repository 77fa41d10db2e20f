"""What the user sees while a job runs: attributed print output and, with verbose, a progress bar.

OUTPUT frames are written to this process's ``sys.stdout`` / ``sys.stderr`` (looked up at
write time, so redirections and pytest's capture apply) with every line prefixed by the
input it came from: ``[input 3] hello``.  With ``verbose=True`` a tqdm bar shows inputs
done/total, instances running and nodes from STATUS frames; output then goes through
``tqdm.write`` so it does not tear the bar.  tqdm is imported only when a bar is wanted.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from .frames import BUILD, NO_INDEX, STDERR


def attribute(index: int, text: str) -> str:
    """Prefix every line of ``text`` with its input (``[input 3] ``); always ends with a newline."""
    prefix = "[worker] " if index == NO_INDEX else f"[input {index}] "
    if text.endswith("\n"):
        text = text[:-1]
    return "".join(f"{prefix}{line}\n" for line in text.split("\n"))


class Progress:
    """Output attribution plus an optional progress bar for one job."""

    def __init__(self, verbose: bool, total: Optional[int], job_id: str) -> None:
        self.bar: Any = None
        self.verbose = bool(verbose)
        self.done = 0
        self._status: dict = {}
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                unit="input",
                desc=f"fleetmap {job_id[:8]}",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def output(self, index: int, stream: int, text: str) -> None:
        """Show text the function printed for input ``index`` (or a node's build log line)."""
        if not text:
            return
        if stream == BUILD:
            self.build(text)
            return
        out = sys.stderr if stream == STDERR else sys.stdout
        lines = attribute(index, text)
        if self.bar is not None:
            self.bar.write(lines.rstrip("\n"), file=out)
        else:
            out.write(lines)
            out.flush()

    def build(self, text: str) -> None:
        """A line of a node's environment build log: shown with ``verbose=True`` only."""
        if self.bar is None and not self.verbose:
            return
        lines = "".join(f"[build] {line}\n" for line in text.rstrip("\n").split("\n"))
        if self.bar is not None:
            self.bar.write(lines.rstrip("\n"), file=sys.stderr)
        else:
            sys.stderr.write(lines)
            sys.stderr.flush()

    def advance(self, count: int) -> None:
        """``count`` more inputs have a result or a failure."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def status(self, progress: dict) -> None:
        """Apply a STATUS frame (``JobProgress``)."""
        if self.bar is None:
            return
        self._status = progress
        self.bar.set_postfix(
            instances=progress.get("instances", 0),
            nodes=progress.get("nodes", 0),
            queued=progress.get("queued", 0),
            refresh=False,
        )

    def set_total(self, total: int) -> None:
        """The input count, once the iterable is exhausted."""
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def close(self) -> None:
        """Finish the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
