"""Training metrics as JSON lines, and a snapshot of the software and hardware a run used.

``metrics.jsonl`` holds one JSON object per line, flushed as soon as it is written, e.g.::

    {"type": "train", "step": 10, "epoch": 0, "loss": 0.69, "lr": 5e-4, "examples_per_s": 41.2, ...}
    {"type": "eval", "step": 313, "epoch": 0, "accuracy": 0.87, "macro_f1": 0.86, ...}

Each record also gets ``time`` (Unix seconds). Non-finite floats are written as ``NaN``/``Infinity``,
which Python's ``json`` reads back. With ``tensorboard_dir`` the same numbers also go to TensorBoard
event files (``train/loss``, ``train/lr``, ``train/examples_per_s``, ``eval/<metric>``), through
``torch.utils.tensorboard``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

import loratune
from loratune.errors import RunError
from loratune.fsutil import atomic_write_text

__all__ = ["METRICS_FILE", "MetricsLogger", "cpu_model", "environment_info", "read_metrics", "tensorboard_writer"]

METRICS_FILE = "metrics.jsonl"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if callable(getattr(obj, "item", None)) and getattr(obj, "size", 1) == 1:  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.device | torch.dtype):
        return str(obj)
    raise TypeError(f"metric value of type {type(obj).__name__} is not JSON-serialisable")


def _metrics_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / METRICS_FILE if p.is_dir() else p


class MetricsLogger:
    """Append metric records to a JSON-lines file, one flushed line per record.

    ``path`` is the file, or an existing folder (then ``<folder>/metrics.jsonl``). When resuming
    from a checkpoint at step ``resume_step``, records with a larger step (written after that
    checkpoint by the interrupted run) are dropped first, so the file never holds a step twice;
    TensorBoard events after that step are purged the same way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        resume_step: int | None = None,
        tensorboard_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._file: IO[str] | None = None
        self._board: Any = None
        self.path = _metrics_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            atomic_write_text(self.path, "".join(self._line(r) for r in kept))
        if tensorboard_dir is not None:
            purge = resume_step + 1 if resume_step is not None else None
            self._board = tensorboard_writer()(str(tensorboard_dir), purge_step=purge)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    @staticmethod
    def _line(record: dict[str, Any]) -> str:
        return json.dumps(record, default=_json_default, ensure_ascii=False) + "\n"

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` (a ``time`` field is added if absent) and flush; return what was written."""
        if self._file is None:
            raise ValueError(f"MetricsLogger for {self.path} is closed")
        record = {**record}
        record.setdefault("time", round(time.time(), 3))
        self._file.write(self._line(record))
        self._file.flush()
        if self._board is not None:
            self._to_tensorboard(record)
        return record

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        """Each numeric field of ``record`` as the scalar ``<type>/<field>`` at its step."""
        kind, step = record.get("type", "train"), int(record.get("step", 0))
        for key, value in record.items():
            if key not in ("type", "step", "epoch", "time") and isinstance(value, int | float):
                self._board.add_scalar(f"{kind}/{key}", value, step, walltime=record["time"])
        self._board.flush()

    def log_train(
        self,
        *,
        step: int,
        epoch: int | float,
        loss: float,
        lr: float,
        examples_per_s: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Write a ``{"type": "train", ...}`` record."""
        rec = {"type": "train", "step": step, "epoch": epoch, "loss": loss, "lr": lr}
        if examples_per_s is not None:
            rec["examples_per_s"] = examples_per_s
        return self.log({**rec, **fields})

    def log_eval(self, *, step: int, epoch: int | float, **metrics: Any) -> dict[str, Any]:
        """Write a ``{"type": "eval", ...}`` record (accuracy, macro_f1, loss, ...)."""
        return self.log({"type": "eval", "step": step, "epoch": epoch, **metrics})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._board is not None:
            self._board.close()
            self._board = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def tensorboard_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a ``RunError`` naming the install command.

    Imported here, not at the top, because TensorBoard is an optional extra.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError(
            "--report-to tensorboard needs the tensorboard package; install it with pip install 'loratune[tensorboard]'"
        ) from None
    return SummaryWriter


def read_metrics(path: str | os.PathLike[str], *, kind: str | None = None) -> list[dict[str, Any]]:
    """Read the records of a metrics file (or ``<folder>/metrics.jsonl``), optionally of one ``kind``
    (the records' ``type`` field: ``"train"``, ``"eval"``).

    A torn last line (the process died mid-write) is skipped; a bad line elsewhere raises RunError.
    A missing file gives an empty list.
    """
    p = _metrics_path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise RunError(f"{p} line {i + 1} is not valid JSON; fix or delete that line") from None
        if not isinstance(rec, dict):
            raise RunError(f"{p} line {i + 1} is not a JSON object; fix or delete that line")
        if kind is None or rec.get("type") == kind:
            records.append(rec)
    return records


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device and CPU facts worth recording next to a run's results."""
    device = torch.device(device) if device is not None else None
    info: dict[str, Any] = {
        "loratune": loratune.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "safetensors": _version("safetensors"),
        "numpy": _version("numpy"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        idx = device.index if device is not None and device.type == "cuda" else None
        info["cuda_version"] = torch.version.cuda
        info["cuda_device_count"] = torch.cuda.device_count()
        info["gpu_name"] = torch.cuda.get_device_name(idx)
    if device is not None:
        info["device"] = str(device)
        info["device_name"] = info.get("gpu_name") if device.type == "cuda" else info["cpu_model"]
    else:
        info["device_name"] = info.get("gpu_name") or info["cpu_model"]
    return info
