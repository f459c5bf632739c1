"""Serving on the packaged MiniLM (CPU, fp32): mixed batches, the HTTP server, adapter loads, merged models.

1. ``mixed``: one ``Runtime.predict_mixed`` call on 64 texts over 4 adapters (seq-cls with 2, 3 and 5 labels
   and a token-cls; ranks 4-16, different targets) against 64 texts of one adapter (``Runtime.predict``), the
   same 64 as 4 per-adapter calls, and PEFT's mixed batch (``adapter_names=``) and ``set_adapter`` per group;
   PEFT cannot mix head sizes, so the PEFT rows and their loratune pair use 4 seq-cls adapters with 2 labels.
2. ``server``: requests/s, p50 and p99 at 1, 8 and 64 concurrent clients (httpx, 1 text per request, a random
   adapter of 4), ``loratune``'s app (micro-batched) against naive servers doing one forward per request under
   a lock: PEFT with ``set_adapter``, and the loratune runtime without the batcher. Each server is its own
   uvicorn process on loopback; the client runs in this process, on the same cores.
3. ``load``: ``Runtime.load`` with the trunk (first load), of an adapter alone (after ``unload``), an
   eviction-triggered reload (``max_adapters=1``, two adapters alternating), and switching adapters per request.
4. ``merged``: ``merge.merge_to_folder`` of one adapter loaded with ``AutoModelForSequenceClassification``
   against the base model with a head of the same size, batch 64 and batch 1.

Random (non-zero) adapters; texts are SST-2 dev sentences of 10-40 words (generated ones without
../shared/data). Every ratio divides two medians of one run, the cases interleaved. Usage::

    PYTHONPATH=src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/serve.py --out serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_ticks, interference, machine_info, median

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv"
MAX_LENGTH = 128
# name: (task, label count, rank, targets); the mixed batch's 4 adapters
HETERO = {
    "sent2": ("seq-cls", 2, 8, ["query", "value"]),
    "topic3": ("seq-cls", 3, 4, ["query", "key", "value"]),
    "grade5": ("seq-cls", 5, 16, ["query", "value", "dense"]),
    "ner": ("token-cls", 5, 8, ["query", "value"]),
}
# the same ranks and targets, all seq-cls with 2 labels: what PEFT can mix
SAME = {f"p{i}": ("seq-cls", 2, spec[2], spec[3]) for i, spec in enumerate(HETERO.values())}
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


# ---------------------------------------------------------------------------------------------- setup
def minilm() -> str:
    from loratune.models import resolve_model

    return str(resolve_model("minilm"))


def make_adapter(folder: Path, base: str, task: str, n_labels: int, r: int, targets: list[str], seed: int) -> Path:
    """A random (non-zero) LoRA adapter with its head, saved as a run's adapter (as tests/conftest.py does)."""
    from loratune.artifacts import base_fingerprint
    from loratune.lora import LoraConfig, add_lora, save_adapter
    from loratune.models import load_tokenizer
    from loratune.tasks import get_task

    labels = TAGS[:n_labels] if task == "token-cls" else [f"c{i}" for i in range(n_labels)]
    net = get_task(task).load_model(base, {"labels": labels})
    torch.manual_seed(seed)
    config = LoraConfig(r=r, alpha=2 * r, target_modules=targets, modules_to_save=["classifier"],
                        init_lora_weights=False, task_type=get_task(task).peft_task_type,
                        base_model_name_or_path=base)  # fmt: skip
    add_lora(net, config, "default")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "modules_to_save" in name:
                p.normal_(0, 0.5)
    save_adapter(net, folder)
    load_tokenizer(base).save_pretrained(folder)
    info = {"task": task, "labels": labels, "base_model": base, "base_model_fingerprint": base_fingerprint(net),
            "max_length": MAX_LENGTH}  # fmt: skip
    (folder / "loratune.json").write_text(json.dumps(info))
    return folder


def make_registry(root: Path, specs: dict[str, tuple[str, int, int, list[str]]], base: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for seed, (name, (task, n, r, targets)) in enumerate(specs.items()):
        make_adapter(root / name, base, task, n, r, targets, seed)
    return root


def load_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of 10-40 words: SST-2 dev when present, else generated."""
    rng = random.Random(seed)
    if SST2.is_file():
        rows = [line.split("\t", 1)[1].strip() for line in SST2.read_text().splitlines()[1:] if "\t" in line]
        pool = [t for t in rows if 10 <= len(t.split()) <= 40]
    else:
        words = ["the", "movie", "was", "really", "good", "and", "plot", "quite", "dull", "acting", "a", "film"]
        pool = [" ".join(rng.choice(words) for _ in range(rng.randint(10, 40))) for _ in range(500)]
    return [rng.choice(pool) for _ in range(n)]


def runtime(registry: Path, **kw: Any) -> Any:
    """A ``Runtime`` on ``registry`` with every adapter loaded."""
    from loratune.serve.runtime import Runtime

    rt = Runtime(registry, batch_size=64, **kw)
    for name in rt.names():
        rt.load(name)
    return rt


def peft_model(registry: Path, base: str) -> Any:
    """PEFT's ``PeftModel`` on a 2-label MiniLM classifier with every adapter of ``registry`` loaded."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    net = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    names = sorted(p.name for p in registry.iterdir())
    model = PeftModel.from_pretrained(net, str(registry / names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(registry / name), adapter_name=name)
    return model.eval()


# ---------------------------------------------------------------------------------------------- timing
def interleaved(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each case, ``repeats`` rounds, the cases in a rotated order each round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    names, times = list(cases), {n: [] for n in cases}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def ms(times: list[float]) -> float:
    return round(1e3 * median(times), 2)


def stats(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and best (min) milliseconds per case: others' processes can only make a call slower."""
    return {k: {"median": ms(v), "min": round(1e3 * min(v), 2)} for k, v in times.items()}


def ratios(st: dict[str, dict[str, float]], pairs: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """``a / b`` of medians and of mins, per named pair of cases."""
    return {k: {s: round(st[a][s] / st[b][s], 3) for s in ("median", "min")} for k, (a, b) in pairs.items()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------- 1. mixed
def peft_cases(pm: Any, tok: Any, texts: list[str], names: list[str]) -> dict[str, Callable[[], Any]]:
    """PEFT's single-adapter batch, mixed batch, and one ``set_adapter`` forward per adapter group."""

    def forward(batch: list[str], **kw: Any) -> list[int]:
        enc = tok(batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            return pm(**enc, **kw).logits.float().softmax(-1).argmax(-1).tolist()

    def single() -> list[int]:
        pm.set_adapter(names[0])
        return forward(texts)

    def groups() -> list[int]:
        out = []
        for i, name in enumerate(names):
            pm.set_adapter(name)
            out += forward(texts[i :: len(names)])
        return out

    routing = [names[i % len(names)] for i in range(len(texts))]
    return {"peft single": single, "peft mixed": lambda: forward(texts, adapter_names=routing),
            "peft set_adapter x4": groups}  # fmt: skip


def runtime_cases(rt: Any, texts: list[str], tag: str) -> dict[str, Callable[[], Any]]:
    """The runtime's single-adapter batch, mixed batch (all adapters, and seq-cls ones only) and per-group calls."""
    names = rt.names()
    seq = [n for n in names if rt.describe(n)["task"] == "seq-cls"]
    mixed = [(names[i % len(names)], t) for i, t in enumerate(texts)]
    cases = {
        f"{tag} single": lambda: rt.predict(seq[0], texts),
        f"{tag} mixed x4": lambda: rt.predict_mixed(mixed),
        f"{tag} 4 calls": lambda: [rt.predict(n, texts[i :: len(names)]) for i, n in enumerate(names)],
    }
    for n in names[1:] if names[0] == seq[0] else names:  # every adapter's own batch ("single" is seq[0]'s)
        if n != seq[0]:
            cases[f"{tag} single {n}"] = lambda n=n: rt.predict(n, texts)
    if len(seq) < len(names):
        one_family = [(seq[i % len(seq)], t) for i, t in enumerate(texts)]
        cases[f"{tag} mixed x3 seq-cls"] = lambda: rt.predict_mixed(one_family)
    return cases


def bench_mixed(hetero: Path, same: Path, base: str, texts: list[str], repeats: int, warmup: int) -> dict[str, Any]:
    """Section 1: the mixed batch against one adapter's batch, per-group calls and PEFT."""
    from transformers import AutoTokenizer

    rt, rts, pm = runtime(hetero), runtime(same), peft_model(same, base)
    cases = {**runtime_cases(rt, texts, "loratune"), **runtime_cases(rts, texts, "loratune 2-label")}
    cases.update(peft_cases(pm, AutoTokenizer.from_pretrained(base), texts, rts.names()))
    st = stats(interleaved(cases, repeats, warmup))
    for tag, reg in (("loratune", rt), ("loratune 2-label", rts)):  # the batch of a mixed batch's average adapter
        seq0 = next(n for n in reg.names() if reg.describe(n)["task"] == "seq-cls")
        singles = [st[f"{tag} single"]] + [st[f"{tag} single {n}"] for n in reg.names() if n != seq0]
        st[f"{tag} single, mean of the 4"] = {s: round(sum(x[s] for x in singles) / 4, 2) for s in ("median", "min")}
    pairs = {
        "loratune mixed x4 / single": ("loratune mixed x4", "loratune single"),
        "loratune mixed x3 seq-cls / single": ("loratune mixed x3 seq-cls", "loratune single"),
        "loratune 4 calls / single": ("loratune 4 calls", "loratune single"),
        "loratune 2-label mixed / single": ("loratune 2-label mixed x4", "loratune 2-label single"),
        "loratune mixed x4 / single, mean of the 4": ("loratune mixed x4", "loratune single, mean of the 4"),
        "loratune 2-label mixed / single, mean of the 4": (
            "loratune 2-label mixed x4",
            "loratune 2-label single, mean of the 4",
        ),
        "peft mixed / single": ("peft mixed", "peft single"),
        "peft set_adapter x4 / single": ("peft set_adapter x4", "peft single"),
        "loratune 2-label mixed / peft mixed": ("loratune 2-label mixed x4", "peft mixed"),
        "loratune 2-label single / peft single": ("loratune 2-label single", "peft single"),
    }
    out = {"batch": len(texts), "repeats": repeats, "ms": st, "ratios": ratios(st, pairs)}
    out["floor_mixed_le_1.1x_single"] = {k: v <= 1.1 for k, v in out["ratios"]["loratune mixed x4 / single"].items()}
    return out


# ---------------------------------------------------------------------------------------------- 2. server
def naive_app(kind: str, registry: Path, base: str) -> Any:
    """A FastAPI app doing one forward per request under a lock: PEFT's ``set_adapter`` (``naive-peft``) or
    the loratune runtime without the micro-batcher (``naive-loratune``)."""
    import threading

    from fastapi import FastAPI
    from transformers import AutoTokenizer

    lock, app = threading.Lock(), FastAPI()
    if kind == "naive-peft":
        pm, tok = peft_model(registry, base), AutoTokenizer.from_pretrained(base)

        def run(name: str, texts: list[str]) -> list[dict[str, Any]]:
            pm.set_adapter(name)
            enc = tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            with torch.no_grad():
                probs = pm(**enc).logits.float().softmax(-1)
            return [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probs]
    else:
        rt = runtime(registry)
        run = rt.predict

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:  # a plain def: FastAPI runs it in its thread pool
        with lock:
            return {"predictions": run(body["adapter"], body["texts"])}

    return app


def serve_child(kind: str, registry: Path, base: str, port: int, window: float, threads: int) -> None:
    """The ``--child`` mode: one server on 127.0.0.1:``port`` until killed, its forwards on ``threads`` threads."""
    import uvicorn

    torch.set_num_threads(threads)
    if kind == "loratune":
        from loratune.serve.app import ServeSettings, create_app

        app = create_app(runtime(registry), ServeSettings(batch_window_ms=window))
    else:
        app = naive_app(kind, registry, base)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    kind: str, registry: Path, base: str, window: float, threads: int, log: Path
) -> tuple[subprocess.Popen, str]:
    """A server process (this script's ``--child`` mode) and its URL."""
    port = free_port()
    cmd = [sys.executable, __file__, "--child", kind, str(registry), base, str(port), str(window), str(threads)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, kind: str, log: Path) -> None:
    """Return once the server at ``url`` answers ``/health`` (an error if it exits or takes over 180 s)."""
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {kind} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server {kind} did not answer /health within 180 s; see {log}")


async def drive(url: str, clients: int, requests: list[tuple[str, str]]) -> tuple[float, list[float]]:
    """Send ``requests`` (1 text each) from ``clients`` concurrent clients: (wall seconds, latencies)."""
    import httpx

    latencies: list[float] = []
    todo = iter(requests)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            for name, text in todo:
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", json={"adapter": name, "texts": [text]})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, latencies


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def summary(wall: float, latencies: list[float]) -> dict[str, float]:
    p50, p99 = (round(1e3 * percentile(latencies, q), 2) for q in (50, 99))
    return {"requests": len(latencies), "rps": round(len(latencies) / wall, 2), "p50_ms": p50, "p99_ms": p99}


def bench_server(registry: Path, base: str, texts: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Section 2: every server at every client count, the servers interleaved round by round."""
    servers = {f"loratune {w:g} ms": ("loratune", w) for w in args.windows}
    servers["naive PEFT set_adapter"] = ("naive-peft", 0.0)
    if not args.quick:
        servers["naive loratune unbatched"] = ("naive-loratune", 0.0)
    procs, logs = {}, {label: tmp / f"{kind}-{window:g}.log" for label, (kind, window) in servers.items()}
    try:
        for label, (kind, window) in servers.items():
            procs[label] = start_server(kind, registry, base, window, args.server_threads, logs[label])
        for label, (proc, url) in procs.items():
            wait_ready(proc, url, label, logs[label])
        names, rng = sorted(p.name for p in registry.iterdir()), random.Random(1)
        for _, url in procs.values():  # warm-up: every adapter, a few concurrent requests
            asyncio.run(drive(url, 8, [(n, t) for n in names for t in texts[:8]]))
        return {str(c): server_level(procs, c, names, texts, rng, args) for c in args.clients}
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(30)


def server_level(procs: dict, clients: int, names: list[str], texts: list[str], rng: random.Random,
                 args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """One client count: ``args.requests`` per server in ``args.rounds`` interleaved rounds."""
    per_round = max(clients, args.requests // args.rounds)
    got: dict[str, list] = {label: [0.0, []] for label in procs}
    for r in range(args.rounds):
        batch = [(rng.choice(names), rng.choice(texts)) for _ in range(per_round)]
        order = list(procs)[r % len(procs) :] + list(procs)[: r % len(procs)]
        for label in order:
            wall, lat = asyncio.run(drive(procs[label][1], clients, batch))
            got[label][0] += wall
            got[label][1] += lat
    out = {label: summary(wall, lat) for label, (wall, lat) in got.items()}
    base = out["naive PEFT set_adapter"]["rps"]
    for label in out:
        out[label]["rps_vs_naive_peft"] = round(out[label]["rps"] / base, 2)
    print(f"  {clients} clients: " + ", ".join(f"{k} {v['rps']} req/s" for k, v in out.items()), file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------- 3. load
def timed_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def bench_load(registry: Path, texts: list[str], repeats: int, warmup: int) -> dict[str, Any]:
    """Section 3: first load (with the trunk), adapter load and unload, eviction reloads, per-request switches."""
    from loratune.serve.runtime import Runtime

    names = sorted(p.name for p in registry.iterdir())
    first = [timed_ms(lambda: Runtime(registry).load(names[0])) for _ in range(max(1, repeats // 5))]
    rt = runtime(registry)
    per_adapter = {}
    for name in names:
        loads, unloads = [], []
        for _ in range(repeats):
            unloads.append(timed_ms(lambda n=name: rt.unload(n)))
            loads.append(timed_ms(lambda n=name: rt.load(n)))
        size = rt.describe(name)["size_bytes"]
        per_adapter[name] = {"load_ms": round(median(loads), 2), "unload_ms": round(median(unloads), 2),
                             "size_kb": round(size / 1024, 1), "r": rt.describe(name)["r"]}  # fmt: skip
    evicting = Runtime(registry, max_adapters=1)
    a, b, text = names[0], names[1], texts[0]
    switch, evict = itertools.cycle((a, b)), itertools.cycle((a, b))
    cases = {
        "same adapter, loaded": lambda: rt.predict(a, [text]),
        "switching adapters, loaded": lambda: rt.predict(next(switch), [text]),
        "eviction + reload (max_adapters=1)": lambda: evicting.predict(next(evict), [text]),
    }
    times = stats(interleaved(cases, 2 * repeats, warmup))
    return {"first_load_with_trunk_ms": round(median(first), 1), "adapters": per_adapter,
            "predict_1_text_ms": times, "evictions": evicting.evictions}  # fmt: skip


# ---------------------------------------------------------------------------------------------- 4. merged
def bench_merged(adapter: Path, base: str, texts: list[str], repeats: int, warmup: int, tmp: Path) -> dict[str, Any]:
    """Section 4: the merged folder against the base model with a same-size head, batch 64 and 1."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from loratune.merge import merge_to_folder

    t0 = time.perf_counter()
    folder, dtype = merge_to_folder(adapter, tmp / "merged")
    merge_s = time.perf_counter() - t0
    merged = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(base, num_labels=merged.config.num_labels).eval()
    tok = AutoTokenizer.from_pretrained(base)
    out: dict[str, Any] = {"merge_s": round(merge_s, 2), "dtype": str(dtype).removeprefix("torch.")}
    for size, n in ((len(texts), repeats), (1, 4 * repeats)):
        enc = tok(texts[:size], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")

        def fwd(net: Any, enc: Any = enc) -> Any:
            with torch.no_grad():
                return net(**enc).logits

        cases = {"merged": lambda: fwd(merged), "base": lambda: fwd(plain)}
        st = stats(interleaved(cases, n, warmup))
        out[f"batch {size}"] = {**st, "ratio": ratios(st, {"r": ("merged", "base")})["r"]}
    batches = [k for k in out if k.startswith("batch")]
    out["floor_le_1.02x"] = {s: all(out[b]["ratio"][s] <= 1.02 for b in batches) for s in ("median", "min")}
    return out


# ---------------------------------------------------------------------------------------------- report
def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def report(res: dict[str, Any]) -> str:
    """The results as markdown tables."""
    parts = []
    if "mixed" in res:
        m = res["mixed"]
        rows = [[k, v["median"], v["min"]] for k, v in m["ms"].items()]
        parts.append(table([f"case (batch {m['batch']})", "median ms", "min ms"], rows))
        rows = [[k, v["median"], v["min"]] for k, v in m["ratios"].items()]
        parts.append(table(["ratio", "of medians", "of mins"], rows))
    if "server" in res:
        rows = [[c, label, v["rps"], v["p50_ms"], v["p99_ms"], v["rps_vs_naive_peft"]]
                for c, level in res["server"].items() for label, v in level.items()]  # fmt: skip
        parts.append(table(["clients", "server", "req/s", "p50 ms", "p99 ms", "req/s vs naive PEFT"], rows))
    if "load" in res:
        ld = res["load"]
        rows = [[n, v["r"], v["size_kb"], v["load_ms"], v["unload_ms"]] for n, v in ld["adapters"].items()]
        parts.append(f"first load (trunk + adapter): {ld['first_load_with_trunk_ms']} ms")
        parts.append(table(["adapter", "r", "KB", "load ms", "unload ms"], rows))
        rows = [[k, v["median"], v["min"]] for k, v in ld["predict_1_text_ms"].items()]
        parts.append(table(["predict 1 text", "median ms", "min ms"], rows))
    if "merged" in res:
        mg = res["merged"]
        rows = [[b, *(mg[b][c][s] for c in ("merged", "base", "ratio") for s in ("median", "min"))]
                for b in mg if b.startswith("batch")]  # fmt: skip
        parts.append(f"merge: {mg['merge_s']} s, saved as {mg['dtype']}")
        head = ["forward", "merged median ms", "merged min ms", "base median ms", "base min ms"]
        parts.append(table([*head, "merged / base (medians)", "(mins)"], rows))
    return "\n\n".join(parts)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="mixed,server,load,merged", help="comma-separated (default: all four)")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per case (default 15)")
    ap.add_argument("--requests", type=int, default=300, help="requests per server and client count (default 300)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds the requests are split into (default 5)")
    ap.add_argument("--server-threads", type=int, default=1,
                    help="torch threads of each server (default 1: the client needs a core too)")  # fmt: skip
    ap.add_argument("--clients", default="1,8,64", help="concurrent client counts (default 1,8,64)")
    ap.add_argument("--windows", default="5,0", help="loratune --batch-window-ms values (default 5,0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's)")
    ap.add_argument("--batch", type=int, default=64, help="texts per batch in the mixed and merged sections")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per case first (default 2)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few repeats and requests (< 1 min)")
    ap.add_argument("--out", type=Path, help="write every number to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.requests, args.rounds = 1, 1, 16, 1
        args.clients, args.windows, args.batch = "1,4", "5", 8
    args.sections = args.sections.split(",")
    args.clients = [int(c) for c in str(args.clients).split(",")]
    args.windows = [float(w) for w in str(args.windows).split(",")]
    return args


def run_sections(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base, texts = minilm(), load_texts(400)
    hetero, same = make_registry(tmp / "hetero", HETERO, base), make_registry(tmp / "same", SAME, base)
    res: dict[str, Any] = {"load_average": {"start": load_average()}}
    steps = {
        "mixed": lambda: bench_mixed(hetero, same, base, texts[: args.batch], args.repeats, args.warmup),
        "server": lambda: bench_server(same, base, texts, args, tmp),
        "load": lambda: bench_load(hetero, texts, args.repeats, args.warmup),
        "merged": lambda: bench_merged(hetero / "sent2", base, texts[: args.batch], args.repeats, args.warmup, tmp),
    }
    for name in args.sections:
        t0, ticks = time.perf_counter(), cpu_ticks()
        print(f"{name}...", file=sys.stderr, flush=True)
        res[name] = steps[name]()
        wall = time.perf_counter() - t0
        res["load_average"][f"after {name}"] = load_average()
        res.setdefault("section_s", {})[name] = round(wall, 1)
        # the CPU share other processes took (in the server section, the servers are among them)
        res.setdefault("others_cpu_share", {})[name] = round(interference(ticks, cpu_ticks(), wall), 3)
    return res


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, registry, base, port, window, threads = sys.argv[2:8]
        serve_child(kind, Path(registry), base, int(port), float(window), int(threads))
        return 0
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="loratune-serve-bench-") as tmp:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        res = {"machine": machine_info(), "command": command, "precision": "fp32", "model": "all-MiniLM-L6-v2",
               "settings": settings, **run_sections(args, Path(tmp))}  # fmt: skip
    print(f"{res['machine']}\ncommand: {command}\nload average: {res['load_average']}")
    print(f"others' CPU share: {res['others_cpu_share']}; section seconds: {res['section_s']}\n")
    print(report(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
