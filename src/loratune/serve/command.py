"""``loratune serve``: its flags, their checks, and the start of uvicorn on the app.

The server binds to 127.0.0.1 unless ``--host`` says otherwise; an API key comes from ``--api-key`` or,
kept out of the process list, the ``LORATUNE_API_KEY`` environment variable. uvicorn handles SIGTERM and
Ctrl-C: it stops accepting connections, lets the requests in flight finish (``--drain-timeout``), then
the micro-batcher finishes its queue and the process exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from typing import Any

from loratune.errors import LoratuneError
from loratune.serve.guard import LOOPBACK_NAMES

KEY_ENV = "LORATUNE_API_KEY"
POSITIVE = {  # flag dest: (type, low, default)
    "port": (int, 0, 8000),
    "max_adapters": (int, 1, None),
    "adapter_memory_mb": (float, 0.001, None),
    "batch_window_ms": (float, 0.0, 5.0),
    "max_batch": (int, 1, 64),
    "max_texts": (int, 1, 64),
    "max_text_chars": (int, 1, 10_000),
    "max_new_tokens": (int, 1, 512),
    "max_body_bytes": (int, 1, 1_000_000),
    "drain_timeout": (float, 0.0, 30.0),
}
HELP = {
    "port": "the TCP port (default 8000; 0 picks a free one)",
    "max_adapters": "at most N adapters loaded; least recently used ones are evicted (default: no limit)",
    "adapter_memory_mb": "at most this many MB of adapter weights loaded (default: no limit)",
    "batch_window_ms": "while requests arrive concurrently, how long one waits for others to share its forward "
    "(default 5; a lone request runs at once)",
    "max_batch": "at most N texts per shared forward (default 64)",
    "max_texts": "at most N texts per request; more get 413 (default 64)",
    "max_text_chars": "at most N characters per text or prompt; longer get 413 (default 10000)",
    "max_new_tokens": "the largest max_tokens a completion may ask for (default 512)",
    "max_body_bytes": "the largest request body; larger get 413 (default 1000000)",
    "drain_timeout": "seconds that requests in flight get to finish after SIGTERM (default 30)",
}


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The flags of ``loratune serve``."""
    p.add_argument(
        "--adapters",
        required=True,
        metavar="DIR",
        help="the registry: a folder with one trained run (or adapter/ folder) per sub-folder",
    )
    p.add_argument("--model", help="the base model (default: the one the adapters name)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--preload",
        metavar="all|NAMES",
        help="load these adapters at start (comma-separated) and make only them available; 'all': "
        "load every adapter (default: every adapter available, loaded on first use)",
    )
    for dest in POSITIVE:
        p.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            type=str,
            default=None,
            metavar="MB" if dest.endswith("mb") else "N",
            help=HELP[dest],
        )
    p.add_argument("--api-key", help=f"a key that loading and unloading need (better: set {KEY_ENV})")
    p.add_argument("--api-key-all", action="store_true", help="every route but /health, / and /docs needs the key")
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example) whose pages may call the API; repeat for more "
        "(default: the server's own pages only)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def checked(args: argparse.Namespace) -> dict[str, Any]:
    """The numeric flags as numbers within their ranges (a one-line error names the flag otherwise)."""
    values = {}
    for dest, (kind, low, default) in POSITIVE.items():
        text = getattr(args, dest)
        if text is None:
            values[dest] = default
            continue
        flag = "--" + dest.replace("_", "-")
        try:
            value = kind(text)
        except ValueError:
            raise LoratuneError(f"{flag} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise LoratuneError(f"{flag} must be a finite number, got {text!r}")
        if not value >= low or (dest == "port" and value > 65535):
            raise LoratuneError(f"{flag} must be >= {low:g}{' and <= 65535' if dest == 'port' else ''}, got {text}")
        values[dest] = value
    return values


def serve(args: argparse.Namespace) -> int:
    """Start the server on ``args`` (blocks until SIGTERM or Ctrl-C)."""
    try:
        import uvicorn

        from loratune.serve.app import ServeSettings, create_app
    except ImportError as err:
        raise LoratuneError(f"loratune serve needs {err.name}: pip install 'loratune[serve]'") from None
    from loratune.device import resolve_device
    from loratune.serve.runtime import Runtime
    from loratune.serve.schemas import Limits

    n = checked(args)
    key = args.api_key or os.environ.get(KEY_ENV) or None
    if args.api_key_all and not key:
        raise LoratuneError(f"--api-key-all needs a key: pass --api-key or set {KEY_ENV}")
    runtime = Runtime(
        args.adapters,
        args.model,
        max_adapters=n["max_adapters"],
        adapter_memory_mb=n["adapter_memory_mb"],
        device=resolve_device(args.device),
        batch_size=n["max_batch"],
    )
    preload(runtime, args.preload)
    limits = Limits(n["max_texts"], n["max_text_chars"], n["max_new_tokens"], n["max_body_bytes"])
    hosts = (*LOOPBACK_NAMES, args.host) if _loopback(args.host) else None  # no DNS rebinding onto loopback
    settings = ServeSettings(
        n["batch_window_ms"], n["max_batch"], limits, key, args.api_key_all, tuple(args.allow_origin), hosts
    )
    if not key and not _loopback(args.host):
        print(
            f"warning: serving on {args.host} with no API key: anyone who reaches it can load and unload "
            f"adapters; set {KEY_ENV}",
            file=sys.stderr,
        )
    config = uvicorn.Config(
        create_app(runtime, settings),
        host=args.host,
        port=n["port"],
        log_level=args.log_level,
        timeout_graceful_shutdown=n["drain_timeout"],
    )
    sock = config.bind_socket()  # bound here, so that --port 0 prints the port it got
    names = runtime.names()
    where = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {len(names)} adapters of {args.adapters} ({', '.join(names) or 'none yet'}) on "
        f"http://{where}:{sock.getsockname()[1]}  (playground: /, API docs: /docs)",
        flush=True,
    )
    for line in refused_warnings(runtime):
        print(line, file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def refused_warnings(runtime: Any) -> list[str]:
    """One warning line per registry folder that holds an adapter the server does not serve."""
    return [f"warning: not serving {name!r}: {reason}" for name, reason in runtime.refused().items()]


def preload(runtime: Any, preload: str | None) -> None:
    """``--preload``: 'all' loads every adapter; NAMES loads those and makes the others unavailable."""
    if not preload:
        return
    names = runtime.names()
    wanted = names if preload.strip() == "all" else [n.strip() for n in preload.split(",") if n.strip()]
    for name in wanted:
        runtime.load(name)  # an unknown name raises, listing the registry
    for name in set(names) - set(wanted):
        runtime.unload(name)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
