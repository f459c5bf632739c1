import torch

from loratune.train.memory import (
    current_rss_bytes,
    dir_size_bytes,
    format_bytes,
    peak_cuda_bytes,
    peak_memory_bytes,
    peak_rss_bytes,
    reset_peak_cuda,
)


def test_rss_measures():
    cur, peak = current_rss_bytes(), peak_rss_bytes()
    assert 10 * 2**20 < cur <= peak * 1.01 + 2**20  # bytes, not KiB
    assert peak_memory_bytes("cpu") >= peak


def test_cuda_peak_without_cuda_is_zero():
    reset_peak_cuda()
    if not torch.cuda.is_available():
        assert peak_cuda_bytes() == 0


def test_dir_size_and_format(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 24)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert dir_size_bytes(tmp_path) == 1024
    assert dir_size_bytes(tmp_path / "a") == 1000
    assert dir_size_bytes(tmp_path / "missing") == 0
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
