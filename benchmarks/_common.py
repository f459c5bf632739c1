"""Helpers shared by the benchmarks: machine description, peak RSS, matmul peak, fresh processes.

Every measured configuration runs in a fresh Python process (``run_isolated``), so that its peak
RSS is its own and not inflated by an earlier configuration or by the parent.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULT_MARK = "@@RESULT "  # prefix of the one JSON line a child process prints for its parent


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Resident set size of this process now (from /proc, no dependency)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd")
_MALLINFO2_FIELDS += ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


def malloc_info() -> dict[str, int] | None:
    """glibc's heap statistics (``mallinfo2``), or None on another C library.

    ``heap`` is what the brk/arena heaps took from the OS, ``heap_free`` the part of it that is
    free but kept (fragmentation, never trimmed), ``mmapped`` the chunks mapped on their own (glibc
    maps a request above ``M_MMAP_THRESHOLD`` separately and unmaps it on free).
    """
    import ctypes

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in _MALLINFO2_FIELDS]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    m = fn()
    return {"heap": m.arena, "heap_used": m.uordblks, "heap_free": m.fordblks, "mmapped": m.hblkhd}


def cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process), from /proc; 0s where unreadable.

    Their deltas over a timed region tell how much CPU *other* processes (or the hypervisor, as
    steal time) took meanwhile: see ``interference``.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal without idle and iowait
        with open("/proc/self/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        return busy, int(stat[11]) + int(stat[12])  # utime + stime of all threads
    except (OSError, IndexError, ValueError):
        return 0, 0


def interference(before: tuple[int, int], after: tuple[int, int], wall_s: float) -> float:
    """Share of the machine's CPU capacity that others used during ``wall_s`` (0 = quiet)."""
    hz = os.sysconf("SC_CLK_TCK")
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / (hz * wall_s * (os.cpu_count() or 1)))


def wait_until_idle(max_wait_s: float, threshold: float = 0.05, sample_s: float = 1.0) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < ``threshold`` of the CPUs; return it."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, t0 = cpu_ticks(), time.perf_counter()
        time.sleep(sample_s)
        load = interference(before, cpu_ticks(), time.perf_counter() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """CPU, cores, RAM, library versions and date, for the results table."""
    import torch

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": sorted(f for f in cpu_flags() if f in {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("transformers", "peft"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def matmul_peak_flops(n: int = 4096, repeats: int = 8) -> dict[str, float]:
    """Best-of-``repeats`` FLOP/s of an ``n x n`` matmul on CPU, fp32 and bf16 (``loratune.train.flops``).

    The best of several is robust against other processes: they can only make a run slower.
    """
    from loratune.train.flops import matmul_peak_flops as peak

    return {name: peak("cpu", name, n=n, repeats=repeats) for name in ("fp32", "bf16")}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def emit_result(result: dict) -> None:
    """Print the child's result as one marked JSON line on stdout."""
    print(RESULT_MARK + json.dumps(result), flush=True)


#: everything from the heap, never trimmed: no page faults once warm; RSS = heap high-water mark
_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**40)}

#: glibc malloc settings a child can run under (environment variables, read at process start)
MALLOC_MODES: dict[str, dict[str, str]] = {
    # glibc as it comes: requests above a dynamic threshold (at most 32 MiB) get their own mapping,
    # unmapped on free, so each such tensor faults its pages in again.
    "default": {},
    # every request >= 64 KiB is its own mapping, returned on free: peak RSS ~ peak live bytes.
    "live": {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)},
    "heap": _HEAP,
    # as "heap", and torch backs every tensor of 2 MiB or more with transparent huge pages
    # (THP_MEM_ALLOC_ENABLE, read by torch's CPU allocator at its first allocation).
    "thp": {**_HEAP, "THP_MEM_ALLOC_ENABLE": "1"},
    # as "heap", and glibc asks for transparent huge pages whenever the heap grows
    "heap-thp": {**_HEAP, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}


def run_isolated(script: str, args: list[str], timeout: float | None = None, malloc: str = "default") -> dict:
    """Run ``python script *args`` in a fresh process and return the JSON dict it emitted.

    ``malloc`` picks one of ``MALLOC_MODES``. The child's stderr passes through (progress); a
    failed child gives ``{"error": ...}``.
    """
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), **MALLOC_MODES[malloc])
    proc = subprocess.run(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = "\n".join(proc.stdout.splitlines()[-5:])
    return {"error": f"child exited with {proc.returncode} and no result; stdout tail: {tail}"}
