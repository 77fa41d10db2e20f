"""Attribution of printed output and the verbose progress bar."""

from __future__ import annotations

import io
import sys

from fleetmap.frames import NO_INDEX, STDERR, STDOUT
from fleetmap.progress import Progress, attribute


def test_attribute_prefixes_every_line():
    assert attribute(3, "hello\n") == "[input 3] hello\n"
    assert attribute(3, "a\nb\n") == "[input 3] a\n[input 3] b\n"
    assert attribute(12, "no newline") == "[input 12] no newline\n"
    assert attribute(0, "\n") == "[input 0] \n"
    assert attribute(NO_INDEX, "loading\n") == "[worker] loading\n"


def test_output_goes_to_the_matching_stream(capsys):
    progress = Progress(False, None, "j" * 32)
    progress.output(4, STDOUT, "out\n")
    progress.output(5, STDERR, "err\n")
    captured = capsys.readouterr()
    assert captured.out == "[input 4] out\n"
    assert captured.err == "[input 5] err\n"


def test_verbose_bar_counts_and_keeps_output_readable(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(True, 10, "abcdef0123456789")
    progress.status({"queued": 3, "running": 2, "done": 4, "failed": 0, "instances": 2, "nodes": 1})
    progress.advance(4)
    progress.output(1, STDERR, "note\n")
    assert progress.bar.n == 4 and progress.bar.total == 10
    progress.set_total(12)
    progress.advance(8)
    progress.close()
    text = err.getvalue()
    assert "[input 1] note" in text
    assert "12/12" in text and "instances=2" in text and "nodes=1" in text
