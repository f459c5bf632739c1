"""Helpers the CLI tests share: one in-process ``loratune`` call, the tiny run's flags, the error-line check."""

from __future__ import annotations

from pathlib import Path

from loratune.cli import main

# the flags of every tiny test run (beside its batch size): short sequences, fp32, no bars, a small adapter
TINY_RUN = ["--precision", "fp32", "--no-progress", "--r", "4", "--alpha", "8", "--lr", "5e-3"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``loratune argv`` in this process: its exit code, stdout and stderr."""
    capsys.readouterr()  # drop what the test itself printed before
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def train_args(model: Path | str, data: Path | None, out: Path, *extra: str, batch_size: int | None = 8) -> list[str]:
    """``train`` of ``model`` on ``data`` (``--dataset``; None: ``extra`` names the data) into ``out`` with the
    tiny run's flags, then ``extra``; ``batch_size`` None keeps the default batch size."""
    dataset = [] if data is None else ["--dataset", str(data)]
    batch = [] if batch_size is None else ["--batch-size", str(batch_size)]
    head = ["train", "--model", str(model), *dataset, "--output", str(out), "--max-length", "32"]
    return [*head, *batch, *TINY_RUN, *extra]


def one_line_error(code: int, err: str, *needles: str, exit_code: int = 2) -> str:
    """Assert ``err`` is one ``error: `` line holding every needle, with exit code ``exit_code``; return it."""
    assert code == exit_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
