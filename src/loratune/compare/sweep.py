"""A LoRA rank sweep: one child per rank, then ranks.json and ranks.png."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loratune.compare import scores
from loratune.compare.plots import plot_ranks
from loratune.compare.report import setup_line
from loratune.compare.runner import Runner
from loratune.errors import LoratuneError
from loratune.fsutil import atomic_write_json


def parse_ranks(text: str, flag: str = "--ranks") -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique); a one-line error naming the flag otherwise."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise LoratuneError(
            f"{flag} must be comma-separated positive integers (e.g. 1,2,4,8,16), got {text!r}"
        ) from None
    if not ranks or ranks[0] < 1:
        raise LoratuneError(f"{flag} must be comma-separated positive integers (e.g. 1,2,4,8,16), got {text!r}")
    return ranks


def rank_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: one row per rank with its trainable parameters, the task's metrics and its time."""
    names = rows[0]["metrics"]
    lines = [
        "| r | trainable | " + " | ".join(scores.label(n) for n in names) + " | training time |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for m in rows:
        values = " | ".join(scores.text(n, m.get(n)) for n in names)
        lines.append(
            f"| {m['r']} | {m['trainable_params']:,} ({m['trainable_percent']:.2f} %) | {values} "
            f"| {m['train_seconds']:.1f} s |"
        )
    return "\n".join(lines)


def sweep_ranks(runner: Runner, cfg, ranks: Sequence[int]) -> list[dict[str, Any]]:
    """One LoRA child per rank; then ranks.json and ranks.png in OUT."""
    out = runner.out
    rows = [
        runner.run(f"rank-{r}", out / f"rank-{r}", f"[{i}/{len(ranks)}] r={r}", method="lora", r=r)
        for i, r in enumerate(ranks, 1)
    ]
    setup = setup_line(cfg, rows[0])
    atomic_write_json(out / "ranks.json", {"setup": setup, "ranks": rows})
    plot_ranks(rows, out / "ranks.png", title=f"{cfg.model}: LoRA rank sweep")
    print("\n" + rank_table(rows))
    print(f"wrote {out / 'ranks.json'}, ranks.png", flush=True)
    return rows
