"""Does ``loratune compare --auto-rank`` pick the rank a full sweep would pick? (issue 4)

For each seed it runs the full sweep (``--ranks``: every rank trained fully) and ``--auto-rank`` over
the same ranks (successive halving, then the chosen rank trained fully), applies the sweep's own
rule to the sweep's accuracies (the smallest rank within ``--tolerance`` points of the best), and
reports both choices, the accuracies, and what each cost: optimizer steps, training seconds, the
seconds of the training processes (each round of auto-rank is one process per surviving rank, with
its start-up, data loading and evaluation), and the wall time of the whole ``compare`` command
(not with ``--reuse-sweeps``, whose sweep ran at another time).

Usage (needs ../shared/data/sst2)::

    .venv/bin/python benchmarks/auto_rank_agreement.py --seeds 42 --train-size 8000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def compare(out: Path, seed: int, args: argparse.Namespace, *extra: str) -> float:
    cmd = [
        str(ROOT / ".venv" / "bin" / "loratune"), "compare", "--model", "minilm",
        "--train-file", str(SST2 / "train.tsv"), "--eval-file", str(SST2 / "dev.tsv"),
        "--train-size", str(args.train_size), "--max-length", "64", "--epochs", str(args.epochs),
        "--seed", str(seed), "--ranks", args.ranks, "--tolerance", str(args.tolerance),
        "--output", str(out), "--overwrite", "--no-progress", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--ranks", default="1,2,4,8,16")
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--train-size", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/loratune-auto-rank"))
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--reuse-sweeps",
        action="store_true",
        help="reuse a finished sweep in --workdir (then no wall-time ratio: the sweep ran at another time)",
    )
    args = ap.parse_args()
    if not SST2.exists():
        print(f"needs {SST2}", file=sys.stderr)
        return 2
    from loratune.compare import choose_rank

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        sweep_dir, auto_dir = args.workdir / f"sweep-{seed}", args.workdir / f"auto-{seed}"
        # the sweep does not depend on auto-rank: a finished one may be reused
        reuse = args.reuse_sweeps and (sweep_dir / "ranks.json").is_file()
        sweep_s = None if reuse else compare(sweep_dir, seed, args)
        auto_s = compare(auto_dir, seed, args, "--auto-rank")
        sweep = json.loads((sweep_dir / "ranks.json").read_text())["ranks"]
        auto = json.loads((auto_dir / "auto_rank.json").read_text())
        auto_runs = [m for rnd in auto["rounds"] for m in rnd["results"] if not m.get("reused")] + [auto["final"]]
        acc = {int(m["r"]): float(m["accuracy"]) for m in sweep}
        row = {
            "seed": seed,
            "sweep_accuracy": acc,
            "sweep_choice": choose_rank(acc, args.tolerance),
            "auto_choice": auto["choice"],
            "auto_final_accuracy": auto.get("final", {}).get("accuracy"),
            "auto_cost_fraction_of_sweep_steps": auto["cost"]["fraction_of_full_sweep"],
            "sweep_train_seconds": round(sum(m["train_seconds"] for m in sweep), 1),
            "auto_train_seconds": round(auto["cost"]["round_train_seconds"] + auto["cost"]["final_train_seconds"], 1),
            "sweep_process_seconds": round(sum(m["process_seconds"] for m in sweep), 1),
            "auto_process_seconds": round(sum(m.get("process_seconds") or 0.0 for m in auto_runs), 1),
            "sweep_seconds": round(sweep_s, 1) if sweep_s is not None else None,
            "auto_seconds": round(auto_s, 1),
        }
        row["agree"] = row["sweep_choice"] == row["auto_choice"]
        row["auto_choice_sweep_accuracy_gap_pt"] = round(100 * (max(acc.values()) - acc[row["auto_choice"]]), 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        "| seed | sweep accuracy by rank | sweep picks | auto picks | agree "
        "| auto / sweep: steps | training s | process s | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        accs = ", ".join(f"r{k}: {100 * v:.1f}" for k, v in sorted(r["sweep_accuracy"].items()))
        wall = f"{r['auto_seconds'] / r['sweep_seconds']:.2f}x" if r["sweep_seconds"] else "(sweep reused)"
        print(
            f"| {r['seed']} | {accs} | {r['sweep_choice']} | {r['auto_choice']} | {'yes' if r['agree'] else 'no'} "
            f"| {r['auto_cost_fraction_of_sweep_steps']:.2f}x "
            f"| {r['auto_train_seconds'] / r['sweep_train_seconds']:.2f}x "
            f"| {r['auto_process_seconds'] / r['sweep_process_seconds']:.2f}x | {wall} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "args": vars(args) | {"workdir": None,
                                         "json": None}, "rows": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
