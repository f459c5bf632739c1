"""compare's handling of any task's metric: labels, text, points, and choosing by direction."""

from __future__ import annotations

import pytest

from loratune.compare import choose_rank, comparison_rows, scores, successive_halving
from loratune.compare.sweep import rank_table


def test_fractions_show_as_percent_and_other_metrics_as_they_are():
    assert scores.text("accuracy", 0.875) == "87.50 %"
    assert scores.text("f1", 0.9123) == "91.23"
    assert scores.text("perplexity", 12.3456) == "12.346"
    assert scores.text("f1", None) == "n/a"
    assert (scores.points("f1", 0.5), scores.points("perplexity", 7.5)) == (50.0, 7.5)
    assert (scores.unit("accuracy"), scores.unit("perplexity")) == ("pt", "perplexity")
    assert scores.label("macro_f1") == "macro-F1"


def test_a_lower_is_better_metric_chooses_the_smallest_rank_near_the_lowest_value():
    ppl = {1: 9.1, 2: 8.45, 4: 8.3, 8: 8.28}
    assert choose_rank(ppl, 0.2, metric="perplexity", higher_is_better=False) == 2  # 8.45 <= 8.28 + 0.2
    assert choose_rank(ppl, 0.0, metric="perplexity", higher_is_better=False) == 8
    assert choose_rank(ppl, 1.0, metric="perplexity", higher_is_better=False) == 1
    # read as higher-is-better, the same values would pick the worst rank: the direction matters
    assert choose_rank(ppl, 0.0, metric="perplexity") == 1


def test_successive_halving_follows_a_lower_is_better_metric():
    final = {1: 12.0, 2: 9.0, 4: 8.1, 8: 8.0}

    def train(r: int, steps: int, _round: int) -> dict:
        return {"perplexity": 30.0 - (30.0 - final[r]) * min(1.0, 0.5 + steps / 160)}

    choice, rounds = successive_halving(final, train, full_steps=160, first_steps=10, tolerance_pt=0.2,
                                        metric="perplexity", higher_is_better=False)  # fmt: skip
    assert choice == 4 and rounds[0].best == 8 and 1 not in rounds[-1].kept


def _run(metric: str, names: list[str], values: dict[str, float], test: dict[str, float] | None = None) -> dict:
    m = {"metric": metric, "metrics": names, "trainable_params": 10, "trainable_percent": 1.0,
         "peak_memory_bytes": 1, "train_seconds": 1.0, "epochs": 1.0, "seconds_per_epoch": 1.0,
         "examples_per_s": 1.0, "weights_bytes": 1, "artifact_bytes": 1, "r": 8}  # fmt: skip
    for name in names:
        m |= {name: values[name], f"test_{name}": (test or {}).get(name)}
    return m


def test_comparison_rows_use_the_tasks_metrics_with_points_only_for_fractions():
    runs = {"full": _run("perplexity", ["perplexity", "loss"], {"perplexity": 8.0, "loss": 2.08}),
            "lora": _run("perplexity", ["perplexity", "loss"], {"perplexity": 8.8, "loss": 2.17})}  # fmt: skip
    rows = {r["measure"]: r for r in comparison_rows(runs)}
    assert rows["perplexity"]["lora_text"] == "8.800" and rows["perplexity"]["ratio"] == pytest.approx(1.1)
    assert "diff_pt" not in rows["perplexity"] and "accuracy" not in rows

    names = ["f1", "precision"]
    runs = {"full": _run("f1", names, {"f1": 0.9, "precision": 0.9}, {"f1": 0.88, "precision": 0.87}),
            "lora": _run("f1", names, {"f1": 0.89, "precision": 0.9}, {"f1": 0.86, "precision": 0.85})}  # fmt: skip
    rows = {r["measure"]: r for r in comparison_rows(runs)}
    assert list(rows)[-3:] == ["test F1", "test precision", "validation F1"]
    assert rows["test F1"]["diff_pt"] == pytest.approx(-2.0)


def test_the_rank_table_has_a_column_per_metric():
    table = rank_table([_run("f1", ["f1", "recall"], {"f1": 0.8125, "recall": 0.5})])
    assert table.splitlines()[0] == "| r | trainable | F1 | recall | training time |"
    assert "| 81.25 | 50.00 |" in table


def test_the_plots_draw_a_lower_is_better_metric(tmp_path):
    from loratune.compare.plots import plot_comparison, plot_ranks

    runs = {"full": _run("perplexity", ["perplexity"], {"perplexity": 8.0}),
            "lora": _run("perplexity", ["perplexity"], {"perplexity": 8.8})}  # fmt: skip
    assert plot_comparison(runs, tmp_path / "c.png").stat().st_size > 1000
    rows = [_run("perplexity", ["perplexity"], {"perplexity": p}) | {"r": r} for r, p in ((2, 9.0), (8, 8.5))]
    assert plot_ranks(rows, tmp_path / "r.png").stat().st_size > 1000
