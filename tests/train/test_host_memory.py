"""host_memory: after keep_freed_memory, a large temporary reuses freed pages (no faults).

Each check runs in a fresh interpreter: the malloc setting is process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loratune.host_memory import supported

CHILD = """
import json, resource, sys, torch
from loratune.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.randn(4096, 3072)  # 50 MB: above the 32 MiB that glibc raises its mmap threshold to
for _ in range(3):
    torch.nn.functional.gelu(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.nn.functional.gelu(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "pages": x.numel() * 4 // 4096}))
"""


def run_child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not supported(), reason="needs glibc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = run_child("default"), run_child("keep")
    assert kept["kept"] is True
    # glibc as it comes maps and unmaps each 50 MB result: every page faults in again, each time
    assert default["faults"] >= 10 * default["pages"] * 0.9
    # kept: the block comes back from the heap, already resident (at most one fresh block here)
    assert kept["faults"] <= 1.1 * kept["pages"]
