"""Full fine-tuning against LoRA, measured: one child per method, then comparison.md, .json and .png."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loratune.compare.plots import plot_comparison
from loratune.compare.runner import Runner
from loratune.fsutil import atomic_write_json, atomic_write_text
from loratune.train.memory import format_bytes


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tutorial's rows (plus macro-F1 and examples/s): one dict per measure with each method's value,
    its text, and ``ratio`` = LoRA / full when both methods ran (accuracy rows also give ``diff_pt``)."""

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
        ("accuracy", "accuracy", lambda m: f"{100 * m['accuracy']:.2f} %"),
        ("macro-F1", "macro_f1", lambda m: f"{100 * m['macro_f1']:.2f}"),
    ]
    first = next(iter(runs.values()))
    if first.get("accuracy") is None:  # a task scored otherwise (causal-lm: perplexity, loss)
        spec[-2:] = [(name, name, lambda m, name=name: f"{m[name]:.4f}") for name in first.get("metrics", ())]
    elif all(m.get("test_accuracy") is not None for m in runs.values()):  # a validation split chose the checkpoints
        spec[-2:] = [
            ("test accuracy", "test_accuracy", lambda m: f"{100 * m['test_accuracy']:.2f} %"),
            ("test macro-F1", "test_macro_f1", lambda m: f"{100 * m['test_macro_f1']:.2f}"),
            ("validation accuracy", "accuracy", lambda m: f"{100 * m['accuracy']:.2f} %"),
        ]
    rows = []
    for measure, key, fmt in spec:
        row: dict[str, Any] = {"measure": measure, "key": key}
        for method, m in runs.items():
            row[method] = m[key]
            row[f"{method}_text"] = fmt(m)
        if "full" in runs and "lora" in runs:
            row["ratio"] = _ratio(runs["lora"][key], runs["full"][key])
            if key in ("accuracy", "macro_f1", "test_accuracy", "test_macro_f1") and runs["lora"][key] is not None:
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
        f"{'Accuracy and macro-F1' if first.get('accuracy') is not None else ', '.join(first.get('metrics', ()))}: "
        f"each run's checkpoint was chosen on {first.get('selection') or 'the eval split'}"
        + (
            "; the test rows score the eval split once, with that checkpoint."
            if first.get("test_accuracy") is not None
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
        f"{first['device']} / {first['precision']}."
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
