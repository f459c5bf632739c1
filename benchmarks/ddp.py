"""Data-parallel training on one machine: an IMDb epoch in 1 process against 2 (torchrun, gloo), and the
bytes one optimizer step all-reduces, LoRA against full fine-tuning (issue 15).

Each run is one ``python -m loratune train`` command (``--nproc 2`` for two processes), MiniLM, one
epoch of a subset of ../shared/data/imdb, global batch 16 in every run (16 x 1 process, 8 x 2
processes), each process limited to ``OMP_NUM_THREADS`` threads. Time is the run's ``train_seconds``
(training steps of the slowest rank; evaluation and saving excluded). The load average before and
after each run is recorded with it (other work on the machine slows the runs). ``--bytes`` runs 2
steps of LoRA and of full fine-tuning on 2 processes and reads ``allreduce_bytes_per_step`` from
their ``summary.json``.

Usage::

    python benchmarks/ddp.py --runs 1x1,2x1,1x2 --train-size 2000
    python benchmarks/ddp.py --bytes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import wait_until_idle

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb"
GLOBAL_BATCH = 16


def command(out: Path, processes: int, train_size: int, eval_size: int, *extra: str) -> list[str]:
    """``python -m loratune train`` on the IMDb subset, global batch 16 over ``processes`` processes."""
    launch = ["--nproc", str(processes)] if processes > 1 else []
    return [sys.executable, "-m", "loratune", "train", "--model", "minilm",
            "--train-file", str(IMDB / "train_5000.csv"), "--eval-file", str(IMDB / "test_1000.csv"),
            "--train-size", str(train_size), "--eval-size", str(eval_size), "--val-size", "0",
            "--max-length", "256", "--epochs", "1", "--batch-size", str(GLOBAL_BATCH // processes),
            "--output", str(out), "--overwrite", "--no-progress", *launch, *extra]  # fmt: skip


def run(cmd: list[str], threads: int, idle_wait: float) -> dict:
    """Run ``cmd`` with ``threads`` threads per process; its summary, wall time and the machine's load."""
    wait_until_idle(idle_wait)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    load, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    s = json.loads((Path(cmd[cmd.index("--output") + 1]) / "summary.json").read_text())
    return {"summary": s, "wall_seconds": round(wall, 1), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}  # fmt: skip


def epoch_row(name: str, r: dict, base: float | None) -> str:
    if "error" in r:
        return f"| {name} | error: {r['error']} |"
    s = r["summary"]
    per_rank = (s.get("distributed") or {}).get("examples_per_s_per_rank") or [s["examples_per_s"]]
    speedup = f"{base / s['train_seconds']:.2f}x" if base else "1.00x"
    return (f"| {name} | {s['train_seconds']:.0f} | {s['examples_per_s']:.1f} | "
            f"{', '.join(f'{x:.1f}' for x in per_rank)} | {speedup} | {s['final'].get('accuracy', 0):.3f} | "
            f"{r['load_before']:.2f} / {r['load_after']:.2f} |")  # fmt: skip


def epochs(args: argparse.Namespace) -> None:
    head = (
        "| run | train s/epoch | examples/s | examples/s per rank | speed vs first | accuracy | load avg before/after |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    base = None
    for spec in args.runs.split(","):
        processes, threads = (int(x) for x in spec.split("x"))
        cmd = command(args.workdir / f"epoch-{spec}", processes, args.train_size, args.eval_size)
        r = run(cmd, threads, args.idle_wait)
        print(json.dumps({"run": spec, "command": " ".join(cmd[1:]), "threads": threads,
                          **{k: v for k, v in r.items() if k != "summary"}}), file=sys.stderr, flush=True)  # fmt: skip
        if base is None and "error" not in r:
            base = r["summary"]["train_seconds"]
        name = f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        lines.append(epoch_row(name, r, base if spec != args.runs.split(",")[0] else None))
    print("\n".join(lines))


def all_reduced(args: argparse.Namespace) -> None:
    lines = ["| method | trainable parameters | all-reduced per step | trainable gradients |", "|---|---|---|---|"]
    for method in ("lora", "full"):
        cmd = command(args.workdir / f"bytes-{method}", 2, 64, 16, "--method", method, "--max-steps", "2")
        r = run(cmd, 1, args.idle_wait)
        if "error" in r:
            lines.append(f"| {method} | error: {r['error']} |")
            continue
        s, d = r["summary"], r["summary"]["distributed"]
        lines.append(f"| {method} | {s['trainable_params']:,} | {d['allreduce_bytes_per_step']:,} B | "
                     f"{d['trainable_grad_bytes']:,} B |")  # fmt: skip
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="1x1,2x1,1x2", help="comma list of PROCESSESxTHREADS (the first is the base)")
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--bytes", action="store_true", help="the all-reduced bytes per step, LoRA vs full, instead")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/loratune-ddp-bench"))
    ap.add_argument("--idle-wait", type=float, default=60.0)
    args = ap.parse_args()
    if not IMDB.exists():
        print(f"needs {IMDB} (the shared IMDb subsets)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    all_reduced(args) if args.bytes else epochs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
