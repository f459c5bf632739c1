"""Atomic file and folder writes, and the lock that gives a run folder one writer (stdlib only).

A reader never sees a half-written file or folder: each write goes to a temporary sibling
(same folder, so the same file system), is flushed and fsynced, then renamed over the target
with ``os.replace``. A crash leaves either the old content or the new, never a mix.

``folder_lock`` holds an exclusive ``flock`` on ``<folder>/.loratune.lock`` while a command writes
the folder: a second command on the same folder fails at once. The kernel drops the lock when the
process ends, however it ends, so a lock file left behind is harmless.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loratune.errors import RunError

try:
    import fcntl
except ImportError:  # Windows: no flock; folders go unlocked there
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "TMP_MARKER",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_keeps",
    "clear_folder",
    "folder_lock",
    "follow_umask",
    "fsync_dir",
    "umask",
]

# Hidden temporary siblings are named ".<name><TMP_MARKER><random>"; cleaners may match on it.
TMP_MARKER = ".tmp-"
LOCK_FILE = ".loratune.lock"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def os_error_code(err: BaseException) -> int | None:
    """The OS error number of ``err``: an ``OSError``'s, or the one a library's message carries (safetensors
    writes ``... (os error 28)``, older releases ``Os { code: 28, ... }``); None when it has none."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(err))
    return int(found.group(1) or found.group(2)) if found else None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    # os.open with 0o666 honours the umask (mkstemp would force 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a full disk: the error names the file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    Serialisation happens before anything touches the disk, so an unserialisable object raises
    ``TypeError`` and leaves ``path`` as it was.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def umask() -> int:
    """The process umask: read from ``/proc/self/status`` where there is one (Linux), so it is never
    changed, not even for a moment; elsewhere set and restored."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give the file ``path`` the mode a new file gets (``0o666`` less the umask), as ``open`` does.

    For files that a library writes with a fixed mode (safetensors' ``save_file`` writes 0600).
    """
    os.chmod(path, 0o666 & ~umask())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a hidden temp sibling, then swap it in for ``path`` on success.

    Yields the fresh temporary folder (same parent as ``path``). When the block ends without an
    exception, its files are fsynced, any existing ``path`` is renamed away, the new folder is
    renamed in and the old one removed. On an exception the temporary folder is removed and an
    existing ``path`` is left untouched.
    """
    path = Path(os.path.abspath(path))  # "." or "..": a real name, so the temp folder is a sibling
    if path == Path(os.path.abspath(os.curdir)) or path in Path.cwd().parents:
        raise RunError(f"cannot replace {path}: it holds the current directory; pass another folder, or cd out of it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()  # honours the umask (mkdtemp would force 0o700)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old: Path | None = None
    if path.exists() or path.is_symlink():
        old = _tmp_sibling(path, ".old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:  # put the previous folder back
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


NAME_MAX = 255  # the longest file name most file systems take


def _tmp_sibling(path: Path, tag: str = "") -> Path:
    """A fresh hidden name next to ``path``: ``.<name><tag>.tmp-<random>``, ``name`` cut so that it fits
    ``NAME_MAX`` (a legal name stays legal with the suffix)."""
    suffix = f"{tag}{TMP_MARKER}{uuid.uuid4().hex[:12]}"
    return path.parent / f".{path.name[: NAME_MAX - 1 - len(suffix)]}{suffix}"


def _fsync_tree(root: Path) -> None:
    """Fsync every file and folder below ``root`` (so the rename publishes durable content)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fp = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                fd = os.open(fp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], flag: str = "--output") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs.

    Another process holding it makes this raise ``RunError`` at once, naming its pid. A folder that
    this call created and that holds nothing but the lock file when the block ends is removed
    again, so a command that fails on its input leaves nothing behind.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{flag} {folder} is a file; pass a folder path")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create {flag} {folder} ({err.strerror}); pass a folder you can write to") from None
    lock = folder / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    locked = False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
                raise RunError(
                    f"{flag} {folder} is in use by another loratune command (pid {holder}); wait for it to end "
                    f"or pass another {flag}"
                ) from None
        locked = True
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield folder
    finally:
        if locked and created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            lock.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        os.close(fd)  # releases the lock


def check_keeps(output: str | os.PathLike[str], sources: dict[str, Any], flag: str = "--output") -> None:
    """Refuse an ``output`` that ``--overwrite`` would replace while it is, or holds, one of the command's
    ``sources`` (``{flag: path}``; paths that do not exist are skipped) or the current directory."""
    out = Path(output).resolve()
    named = {"the current directory": Path.cwd(), **sources}
    for name, source in named.items():
        if source is None or not Path(source).exists():
            continue
        src = Path(source).resolve()
        if src == out or out in src.parents:
            what = name if name.startswith("the ") else f"{name} {source}"
            raise RunError(f"{flag} {output} holds {what}, which --overwrite would delete; pass another {flag}")


def clear_folder(folder: str | os.PathLike[str]) -> None:
    """Delete everything in ``folder`` but its lock file."""
    for path in Path(folder).iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
