"""Full fine-tuning against LoRA, measured: one child per method, then comparison.md, .json and .png."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loratune.compare import scores
from loratune.compare.plots import plot_comparison
from loratune.compare.runner import Runner
from loratune.fsutil import atomic_write_json, atomic_write_text
from loratune.train.memory import format_bytes


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _score_rows(m: Mapping[str, Any]) -> list[tuple[str, str, Callable[[Mapping[str, Any]], str]]]:
    """The task's metric rows: the chosen checkpoint's, or when a validation split chose it, the test
    split's for each metric and then the validation value of the choosing metric."""

    def row(title: str, key: str, name: str) -> tuple[str, str, Callable[[Mapping[str, Any]], str]]:
        return title, key, lambda run: scores.text(name, run.get(key))

    names, metric = m["metrics"], m["metric"]
    if m.get(f"test_{metric}") is None:
        return [row(scores.label(name), name, name) for name in names]
    tested = [row(f"test {scores.label(name)}", f"test_{name}", name) for name in names]
    return [*tested, row(f"validation {scores.label(metric)}", metric, metric)]


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tutorial's rows (plus macro-F1 and examples/s): one dict per measure with each method's value,
    its text, and ``ratio`` = LoRA / full when both methods ran (rows of fractions such as accuracy also give
    ``diff_pt``)."""

    def epochs_text(m: Mapping[str, Any]) -> str:
        e = m["epochs"]
        return f"{e:g} epoch{'s' if e != 1 else ''}"

    spec: list[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = [
        (
            "trainable parameters",
            "trainable_params",
            lambda m: f"{m['trainable_params']:,} ({m['trainable_percent']:.2f} %)",
        ),
        ("training memory", "peak_memory_bytes", lambda m: f"{format_bytes(m['peak_memory_bytes'])}"),
        (
            "training time",
            "train_seconds",
            lambda m: f"{m['train_seconds']:.1f} s for {epochs_text(m)} ({m['seconds_per_epoch'] or 0:.1f} s/epoch)",
        ),
        ("examples/s", "examples_per_s", lambda m: f"{m['examples_per_s']:.1f}"),
        (
            "storage per task",
            "weights_bytes",
            lambda m: f"{format_bytes(m['weights_bytes'])} (folder {format_bytes(m['artifact_bytes'])})",
        ),
        *_score_rows(next(iter(runs.values()))),
    ]
    rows = []
    for measure, key, fmt in spec:
        row: dict[str, Any] = {"measure": measure, "key": key}
        for method, m in runs.items():
            row[method] = m[key]
            row[f"{method}_text"] = fmt(m)
        if "full" in runs and "lora" in runs:
            row["ratio"] = _ratio(runs["lora"][key], runs["full"][key])
            metric = key.removeprefix("test_")
            if metric in scores.FRACTIONS and None not in (runs["lora"][key], runs["full"][key]):
                row["diff_pt"] = 100 * (runs["lora"][key] - runs["full"][key])
        rows.append(row)
    return rows


def comparison_markdown(runs: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]], setup: str) -> str:
    names = {"full": "full fine-tuning", "lora": f"LoRA r={runs['lora']['r']}" if "lora" in runs else "LoRA"}
    both = "ratio" in rows[0]
    header = ["measure", *(names[m] for m in runs), *(["LoRA / full"] if both else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["measure"], *(row[f"{m}_text"] for m in runs)]
        if both:
            ratio = row["ratio"]
            text = "n/a" if ratio is None else f"{ratio:.3g}x"
            if "diff_pt" in row:
                text += f" ({row['diff_pt']:+.2f} pt)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(runs.values()))
    notes = [
        f"Training memory: {first['memory_kind']} of each run's own process (model, data, activations, "
        "gradients, optimizer state; on CPU also Python and its libraries).",
        "Training time: optimizer steps only (evaluation and loading excluded). Storage per task: the saved "
        "weights (safetensors); the folder adds tokenizer and config.",
        f"{scores.label(first['metric']).capitalize()}: each run's checkpoint was chosen on "
        f"{first.get('selection') or 'the eval split'}"
        + (
            "; the test rows score the eval split once, with that checkpoint."
            if first.get(f"test_{first['metric']}") is not None
            else "."
        ),
    ]
    if any(m["reused"] for m in runs.values()):
        notes.append("Some runs were reused from an earlier, resumed invocation (--resume).")
    return "\n".join(
        ["# Full fine-tuning vs LoRA, measured", "", setup, "", *lines, "", *(f"- {n}" for n in notes), ""]
    )


def setup_line(cfg, first: Mapping[str, Any]) -> str:
    return (
        f"Model `{cfg.model}`, data `{cfg.dataset or cfg.train_file}` ({first['train_examples']} train / "
        f"{first['eval_examples']} eval), max length {cfg.max_length}, batch {cfg.batch_size}, "
        f"{first['device']} / {first['compute_precision']}."
    )


def compare_methods(runner: Runner, cfg, methods: Sequence[str]) -> dict[str, Any]:
    """One child per method; then comparison.md, comparison.json and comparison.png in OUT."""
    out = runner.out
    runs: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(methods, 1):
        runs[method] = runner.run(method, out / method, f"[{i}/{len(methods)}] {method}", method=method)
    rows = comparison_rows(runs)
    setup = setup_line(cfg, next(iter(runs.values())))
    markdown = comparison_markdown(runs, rows, setup)
    result = {
        "setup": setup,
        "methods": runs,
        "rows": rows,
        "ratio": "lora / full" if len(runs) == 2 else None,
        "files": {"markdown": "comparison.md", "plot": "comparison.png"},
    }
    atomic_write_text(out / "comparison.md", markdown)
    atomic_write_json(out / "comparison.json", result)
    plot_comparison(runs, out / "comparison.png", title=f"{cfg.model}: full fine-tuning vs LoRA")
    print("\n" + markdown)
    print(f"wrote {out / 'comparison.md'}, comparison.json, comparison.png", flush=True)
    return result
