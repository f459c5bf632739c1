"""Atomic, pickle-free training checkpoints for exact resume.

A checkpoint is a folder, written whole or not at all (``fsutil.atomic_dir``)::

    run_dir/checkpoints/step-000123/
        weights.safetensors     the trainable tensors (LoRA A/B, heads; everything for full FT)
        optimizer.safetensors   optimizer tensors, flattened as ``state.<param index>.<key>``
        optimizer.json          the rest of ``optimizer.state_dict()`` (param groups, scalars)
        scheduler.json          ``scheduler.state_dict()`` (tensors, if any, in scheduler.safetensors)
        rng.safetensors         torch CPU (``cpu``) and CUDA (``cuda.<i>``) generator states; in a distributed
                                run also the other ranks' (``rank.<r>.cpu``, ``rank.<r>.cuda``)
        rng.json                python ``random`` and numpy global generator states
        trainer_state.json      step, epoch, batch_in_epoch, extra, version, time, file checksums

Nothing is pickled: tensors go to safetensors, everything else to JSON. Non-tensor values are
encoded so that they come back with the same Python types (tuples stay tuples, int dict keys stay
ints). Loading checks every file's SHA-256 before it touches the optimizer, scheduler or RNG.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

import loratune
from loratune.errors import RunError
from loratune.fsutil import TMP_MARKER, atomic_dir
from loratune.lora.io import save_tensors

__all__ = [
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "CheckpointState",
    "checkpoint_dir",
    "checkpoint_world_size",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")

WEIGHTS = "weights.safetensors"
OPT_TENSORS = "optimizer.safetensors"
OPT_JSON = "optimizer.json"
SCHED_TENSORS = "scheduler.safetensors"
SCHED_JSON = "scheduler.json"
RNG_TENSORS = "rng.safetensors"
RNG_JSON = "rng.json"
TRAINER_STATE = "trainer_state.json"


@dataclass
class CheckpointState:
    """What ``load_checkpoint`` returns besides restoring optimizer, scheduler and RNG in place."""

    path: Path
    trainable_state: dict[str, torch.Tensor]  # on CPU; copy into the model's parameters
    step: int
    epoch: int
    batch_in_epoch: int
    extra: dict[str, Any] = field(default_factory=dict)
    loratune_version: str = ""
    time: str = ""
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # rng.safetensors (the ranks' states too)


# ---------------------------------------------------------------------------------------------
# Encoding of state dicts: tensors -> safetensors, the rest -> typed JSON
# ---------------------------------------------------------------------------------------------


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Turn a state-dict value into JSON, moving tensors into ``tensors`` under dotted ``key``."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), key, tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}" if key else k, tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, bool | int | str):
                raise TypeError(f"cannot checkpoint dict key {k!r} of type {type(k).__name__}")
            items.append([k, _encode(v, f"{key}.{k}" if key else str(k), tensors)])
        return {"__items__": items}
    raise TypeError(
        f"cannot checkpoint value of type {type(obj).__name__} at '{key}' without pickle; "
        "state dicts may hold only tensors, numbers, strings, None, lists, tuples and dicts"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``_encode``."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def _for_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, cloned where two would share storage (safetensors refuses)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        if ptr != -1:
            seen.add(ptr)
        out[k] = t
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``save_tensors`` (the umask's mode; a disk error names the file).

    The usual ``format`` metadata is left off an empty file (an optimizer that has not stepped yet):
    safetensors before 0.4.4 cannot read such a file back.
    """
    save_tensors(tensors, path, metadata={"format": "pt"} if tensors else None)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "name": name,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        for i in range(min(len(cuda), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda[i], i)
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npm = meta["numpy"]
    np.random.set_state(
        (
            npm["name"],
            np.asarray(npm["keys"], dtype=np.uint32),
            npm["pos"],
            npm["has_gauss"],
            npm["cached_gaussian"],
        )
    )


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """The folder for the checkpoint at ``step``: ``run_dir/checkpoints/step-000123``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def save_checkpoint(
    folder: str | Path,
    *,
    trainable_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    extra: dict[str, Any] | None = None,
    rank_rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (replacing an existing one) and return it.

    ``extra`` must be JSON-serialisable (e.g. best metric so far, config hash). ``scheduler`` is
    any object with ``state_dict()``/``load_state_dict()`` or None. ``rank_rng``: other processes'
    RNG states (``rank.<r>.<device>``), saved next to this process's own.
    """
    folder = Path(folder)
    extra = dict(extra or {})
    # Serialise everything before touching the disk: a TypeError leaves no trace.
    weights = _for_safetensors(trainable_state)
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_json = _encode(optimizer.state_dict(), "", opt_tensors)
    sched_tensors: dict[str, torch.Tensor] = {}
    sched_json = _encode(scheduler.state_dict(), "", sched_tensors) if scheduler is not None else None
    rng_tensors, rng_json = _rng_state()
    rng_tensors.update(rank_rng or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint 'extra' must be JSON-serialisable: {e}") from None

    with atomic_dir(folder) as tmp:
        _save_tensors(weights, tmp / WEIGHTS)
        _save_tensors(_for_safetensors(opt_tensors), tmp / OPT_TENSORS)
        _write_json(tmp / OPT_JSON, opt_json)
        if sched_json is not None:
            _write_json(tmp / SCHED_JSON, sched_json)
            if sched_tensors:
                _save_tensors(_for_safetensors(sched_tensors), tmp / SCHED_TENSORS)
        _save_tensors(_for_safetensors(rng_tensors), tmp / RNG_TENSORS)
        _write_json(tmp / RNG_JSON, rng_json)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "epoch": int(epoch),
            "batch_in_epoch": int(batch_in_epoch),
            "extra": extra,
            "loratune_version": loratune.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        _write_json(tmp / TRAINER_STATE, state)
    return folder


def _bad(folder: Path, what: str) -> RunError:
    return RunError(
        f"checkpoint {folder} is unusable ({what}); delete that folder to resume from an earlier "
        "checkpoint, or start a fresh run without --resume"
    )


def _verified_state(folder: Path) -> dict[str, Any]:
    """``trainer_state.json``, after checking that every file it lists is there with its checksum."""
    if not folder.is_dir():
        raise RunError(f"checkpoint {folder} does not exist; check the path or start a fresh run")
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        files: dict[str, str] = state["files"]
        state["counters"] = (int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"]))
    except FileNotFoundError:
        raise _bad(folder, f"{TRAINER_STATE} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _bad(folder, f"{TRAINER_STATE} is corrupt: {type(e).__name__}") from None
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise RunError(
            f"checkpoint {folder} has format {state['format_version']}, newer than this loratune "
            f"supports ({FORMAT_VERSION}); upgrade loratune to resume it"
        )
    for name in (WEIGHTS, OPT_TENSORS, OPT_JSON, RNG_TENSORS, RNG_JSON):
        if name not in files:
            raise _bad(folder, f"{TRAINER_STATE} lists no {name}")
    for name, digest in files.items():
        p = folder / name
        if not p.is_file():
            raise _bad(folder, f"{name} is missing")
        if _sha256(p) != digest:
            raise _bad(folder, f"{name} is corrupt: checksum mismatch")
    return state


def _read_states(folder: Path, files: dict[str, str]) -> tuple[dict, dict, Any, dict, dict]:
    """Weights, optimizer state, scheduler state (or None), RNG tensors and RNG JSON of a verified folder."""
    try:
        weights = load_file(folder / WEIGHTS)
        opt_state = _decode(json.loads((folder / OPT_JSON).read_text("utf-8")), load_file(folder / OPT_TENSORS))
        sched_state = None
        if SCHED_JSON in files:
            sched_tensors = load_file(folder / SCHED_TENSORS) if SCHED_TENSORS in files else {}
            sched_state = _decode(json.loads((folder / SCHED_JSON).read_text("utf-8")), sched_tensors)
        return (
            weights,
            opt_state,
            sched_state,
            load_file(folder / RNG_TENSORS),
            json.loads((folder / RNG_JSON).read_text("utf-8")),
        )
    except Exception as e:  # safetensors raises its own error types
        raise _bad(folder, f"cannot read it: {type(e).__name__}: {e}".splitlines()[0]) from None


def load_checkpoint(
    folder: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
) -> CheckpointState:
    """Restore optimizer, scheduler and RNG states from ``folder``; return tensors and counters.

    The optimizer must be built over the same trainable parameters, in the same order, as the one
    that was saved. Every file is read and verified first, so a corrupt checkpoint raises
    ``RunError`` before any state changes.
    """
    folder = Path(folder)
    state = _verified_state(folder)
    weights, opt_state, sched_state, rng_tensors, rng_json = _read_states(folder, state["files"])
    if scheduler is not None and sched_state is None:
        raise RunError(
            f"checkpoint {folder} has no scheduler state but this run uses a scheduler; "
            "resume with the same training settings or start a fresh run"
        )
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise RunError(
            f"checkpoint {folder} does not fit this run's optimizer ({str(e).splitlines()[0]}); "
            "resume with the same model, LoRA and optimizer settings, or start a fresh run"
        ) from None
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    if restore_rng:
        try:
            _set_rng_state(rng_tensors, rng_json)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise _bad(folder, f"RNG state is invalid: {type(e).__name__}") from None
    step, epoch, batch_in_epoch = state["counters"]
    return CheckpointState(
        path=folder,
        trainable_state=weights,
        step=step,
        epoch=epoch,
        batch_in_epoch=batch_in_epoch,
        extra=state.get("extra") or {},
        loratune_version=state.get("loratune_version", ""),
        time=state.get("time", ""),
        rng=rng_tensors,
    )


def checkpoint_world_size(folder: str | Path) -> int:
    """How many processes trained the run whose checkpoint ``folder`` is (1 when it does not say)."""
    try:
        state = json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))
        return int((state.get("extra") or {}).get("world_size", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1  # an unreadable checkpoint is refused, with its reason, when it is loaded


# ---------------------------------------------------------------------------------------------
# Listing / pruning
# ---------------------------------------------------------------------------------------------


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``run_dir/checkpoints`` as ``(step, path)``, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``run_dir/checkpoints``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int = 2) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return the removed folders.

    Also removes temporary folders that an interrupted save left behind, so call it only when no
    save is in progress (e.g. right after ``save_checkpoint`` in the one process that writes).
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    removed = [p for _, p in list_checkpoints(run_dir)[:-keep]]
    root = Path(run_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        removed += [p for p in root.iterdir() if p.name.startswith(".step-") and TMP_MARKER in p.name]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed
