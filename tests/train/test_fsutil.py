import json
import os

import pytest

from loratune import fsutil
from loratune.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text


def _litter(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_files(tmp_path):
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_text(tmp_path / "b.txt", "second")
    assert (tmp_path / "b.txt").read_text() == "second"
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert _litter(tmp_path) == []
    assert _litter(tmp_path / "sub") == []


def test_atomic_write_json_unserialisable_leaves_old(tmp_path):
    atomic_write_json(tmp_path / "c.json", {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "c.json", {"bad": object()})
    assert json.loads((tmp_path / "c.json").read_text()) == {"ok": 1}
    assert _litter(tmp_path) == []


def test_atomic_write_respects_umask(tmp_path):
    p = atomic_write_text(tmp_path / "f.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_umask_is_read_and_followed(tmp_path, umask):
    assert fsutil.umask() == umask
    path = tmp_path / "private"
    path.write_bytes(b"")
    path.chmod(0o600)  # as safetensors' save_file leaves a file
    fsutil.follow_umask(path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_dir_creates_and_replaces(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.is_dir()
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _litter(tmp_path) == []


def test_atomic_dir_exception_keeps_old_and_no_litter(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert _litter(tmp_path) == []


def test_atomic_dir_exception_without_existing(tmp_path):
    with pytest.raises(KeyError), atomic_dir(tmp_path / "new") as tmp:
        (tmp / "x").write_text("x")
        raise KeyError("x")
    assert list(tmp_path.iterdir()) == []


def test_folder_lock_removes_only_a_folder_it_created_and_left_empty(tmp_path):
    from loratune.errors import RunError
    from loratune.fsutil import LOCK_FILE, folder_lock

    with folder_lock(tmp_path / "new") as folder:
        assert (folder / LOCK_FILE).read_text() == str(os.getpid())
    assert not (tmp_path / "new").exists()  # nothing was written: nothing is left
    with folder_lock(tmp_path / "kept") as folder:
        (folder / "result.txt").write_text("x")
    assert (tmp_path / "kept" / "result.txt").exists()
    (tmp_path / "existing").mkdir()
    with folder_lock(tmp_path / "existing"):
        pass
    assert (tmp_path / "existing").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="is a file; pass a folder path"), folder_lock(tmp_path / "file"):
        pass


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (OSError(28, "No space left on device"), 28),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), 28),
        (RuntimeError('IoError(Os { code: 36, kind: InvalidFilename, message: "File name too long" })'), 36),
        (RuntimeError("shape mismatch"), None),
    ],
)
def test_os_error_code_reads_an_os_error_or_one_a_library_message_carries(err, code):
    from loratune.fsutil import os_error_code

    assert os_error_code(err) == code
