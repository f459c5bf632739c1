"""Progress display: a tqdm bar on a terminal, plain lines in logs and CI.

On a TTY this is tqdm (ETA, rate, postfix). When the output is not a TTY (a pipe, a file, CI),
a redrawn bar would fill the log with carriage returns, so instead a plain line is printed every
``every_pct`` percent (or only once at the end), with the same ETA and postfix text.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import IO, Any

from tqdm import tqdm

__all__ = ["Progress", "format_postfix", "progress_bar", "set_progress_postfix"]

_PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def format_postfix(
    *, loss: float | None = None, lr: float | None = None, examples_per_s: float | None = None, **extra: Any
) -> dict[str, str]:
    """Compact postfix fields: ``loss=0.4321 lr=5.00e-04 ex/s=41.2`` (None values are left out)."""
    out: dict[str, str] = {}
    if loss is not None:
        out["loss"] = f"{float(loss):.4f}"
    if lr is not None:
        out["lr"] = f"{float(lr):.2e}"
    if examples_per_s is not None:
        out["ex/s"] = f"{float(examples_per_s):.1f}"
    for k, v in extra.items():
        if v is not None:
            out[k] = f"{v:.4g}" if isinstance(v, float) else str(v)
    return out


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress display with one interface in both modes: ``update``, ``set_metrics``, ``write``, ``close``.

    Use ``progress_bar(...)`` to build one. ``bar`` is the tqdm object in TTY mode, else None.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        bar: bool,
        file: IO[str],
        every_pct: float | None,
        silent: bool,
        unit: str,
        initial: int,
    ) -> None:
        self.total = total
        self.desc = desc
        self.n = initial
        self.unit = unit
        self._file = file
        self._silent = silent
        self._every = every_pct
        self._postfix: dict[str, str] = {}
        self._start = time.monotonic()
        self._initial = initial
        self._next_pct = self._first_threshold(initial)
        self._closed = False
        self.bar: Any = None
        if bar and not silent:
            self.bar = tqdm(total=total, desc=desc, file=file, unit=unit, initial=initial, dynamic_ncols=True)

    def _first_threshold(self, n: int) -> float:
        if not self._every or not self.total:
            return float("inf")
        done = 100.0 * n / self.total
        return (done // self._every + 1) * self._every

    def update(self, n: int = 1) -> None:
        """Advance by ``n``; in plain mode print a line each time another ``every_pct`` is reached."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if self._silent or not self.total or self.n >= self.total:
            return
        pct = 100.0 * self.n / self.total
        if pct >= self._next_pct:
            self._print_line()
            self._next_pct = self._first_threshold(self.n)

    def set_metrics(
        self,
        *,
        loss: float | None = None,
        lr: float | None = None,
        examples_per_s: float | None = None,
        **extra: Any,
    ) -> None:
        """Show loss / learning rate / examples per second (and any extra fields) after the bar."""
        self._postfix = format_postfix(loss=loss, lr=lr, examples_per_s=examples_per_s, **extra)
        if self.bar is not None:
            self.bar.set_postfix(self._postfix, refresh=False)

    def line(self) -> str:
        """The current state as one plain line (what plain mode prints)."""
        postfix = ", ".join(f"{k}={v}" for k, v in self._postfix.items())  # tqdm adds the ", "
        return tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self._start,
            prefix=self.desc,
            unit=self.unit,
            initial=self._initial,
            bar_format=_PLAIN_FORMAT if self.total else _PLAIN_FORMAT_NO_TOTAL,
            postfix=postfix,
        )

    def _print_line(self) -> None:
        print(self.line(), file=self._file, flush=True)

    def write(self, message: str) -> None:
        """Print a message without breaking the bar."""
        if self._silent:
            return
        if self.bar is not None:
            self.bar.write(message, file=self._file)
        else:
            print(message, file=self._file, flush=True)

    def close(self) -> None:
        """Finish: close the bar, or print the final plain line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        elif not self._silent:
            self._print_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress_bar(
    total: int | None,
    desc: str,
    *,
    enabled: bool | None = None,
    file: IO[str] | None = None,
    every_pct: float | None = 10,
    silent: bool = False,
    unit: str = "step",
    initial: int = 0,
) -> Progress:
    """Build a progress display for ``total`` units.

    ``enabled``: True forces the tqdm bar, False forces plain lines, None (default) picks the bar only
    when ``file`` (default stderr) is a terminal. Plain mode prints every ``every_pct`` percent, or only
    the final line when ``every_pct`` is None. ``silent`` prints nothing at all (e.g. non-zero ranks).
    ``initial`` starts the count there (resumed runs).
    """
    stream = file if file is not None else sys.stderr
    use_bar = _is_tty(stream) if enabled is None else enabled
    return Progress(
        total,
        desc,
        bar=use_bar,
        file=stream,
        every_pct=every_pct,
        silent=silent,
        unit=unit,
        initial=initial,
    )


def set_progress_postfix(
    progress: Progress | Any,
    *,
    loss: float | None = None,
    lr: float | None = None,
    examples_per_s: float | None = None,
    **extra: Any,
) -> None:
    """Set loss / lr / examples-per-second on a ``Progress`` or a raw tqdm bar."""
    if isinstance(progress, Progress):
        progress.set_metrics(loss=loss, lr=lr, examples_per_s=examples_per_s, **extra)
    else:
        progress.set_postfix(format_postfix(loss=loss, lr=lr, examples_per_s=examples_per_s, **extra))
