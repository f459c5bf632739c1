"""`loratune compare` on the tiny local model: full vs LoRA, rank sweep, auto-rank, child errors, Ctrl-C.

Every training run of compare is a child process (~5 s each, mostly imports), so the end-to-end tests
use small step budgets and few runs; the selection logic is tested as pure functions.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import one_line_error, run
from loratune.compare import (
    Round,
    child_argv,
    child_mode,
    choose_rank,
    measures_at_step,
    parse_ranks,
    successive_halving,
)
from loratune.errors import LoratuneError
from loratune.train.config import build_config


def compare_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compare", "--model", str(model), "--dataset", str(data), "--output", str(out),
        "--max-length", "32", "--batch-size", "8", "--precision", "fp32", "--no-progress",
        "--alpha", "8", "--lr", "5e-3", *extra,
    ]  # fmt: skip


def test_choose_rank_is_the_smallest_rank_within_tolerance_of_the_best():
    acc = {1: 0.800, 2: 0.861, 4: 0.866, 8: 0.870, 16: 0.869}
    assert choose_rank(acc, 0.5) == 4  # best 87.0; 86.6 is within 0.5 pt, 86.1 is not
    assert choose_rank(acc, 1.0) == 2
    assert choose_rank(acc, 0.0) == 8  # no tolerance: the best itself
    assert choose_rank(acc, 10.0) == 1
    assert choose_rank({1: 0.865, 8: 0.870}, 0.5) == 1  # exactly at the tolerance counts
    assert choose_rank({4: 0.9, 2: 0.9, 8: 0.9}, 0.0) == 2  # ties: the smallest
    assert choose_rank({16: 0.5}, 0.5) == 16


def _fake_curve(final: dict[int, float], full_steps: int):
    """Made-up learning curves: accuracy rises with the budget towards each rank's final accuracy."""
    calls: list[tuple[int, int, int]] = []

    def train(r: int, steps: int, index: int) -> dict[str, float]:
        calls.append((r, steps, index))
        return {"accuracy": 0.5 + (final[r] - 0.5) * min(1.0, 0.5 + steps / full_steps), "macro_f1": 0.0}

    return train, calls


def test_successive_halving_picks_like_the_full_sweep_for_a_fraction_of_its_cost():
    final = {1: 0.80, 2: 0.84, 4: 0.868, 8: 0.870, 16: 0.869}
    train, calls = _fake_curve(final, 160)
    choice, rounds = successive_halving(final, train, full_steps=160, first_steps=10, tolerance_pt=0.5)
    assert choice == choose_rank(final, 0.5) == 4
    assert [r.steps for r in rounds] == [10, 20]  # the budget doubles
    assert sorted(rounds[0].results) == [1, 2, 4, 8, 16]
    assert rounds[0].best == 8 and rounds[0].choice == 4 and rounds[0].kept == [4, 8, 16]  # the better half
    for before, after in itertools.pairwise(rounds):
        assert sorted(after.results) == before.kept and len(after.results) < len(before.results)
    assert rounds[-1].kept == [4] and rounds[-1].choice == 4
    spent = sum(steps for _, steps, _ in calls)
    assert spent < 2 * 160  # the full sweep costs 5 x 160 steps
    assert all(isinstance(r, Round) and r.best in r.results for r in rounds)


def test_successive_halving_edge_cases():
    # One candidate: nothing to decide, no short runs.
    train, calls = _fake_curve({8: 0.9}, 100)
    assert successive_halving([8], train, full_steps=100, first_steps=10, tolerance_pt=0.5) == (8, [])
    assert calls == []
    # Two candidates: one round decides by the rule itself (the small rank is within tolerance).
    train, calls = _fake_curve({2: 0.866, 8: 0.870}, 100)
    choice, rounds = successive_halving([8, 2], train, full_steps=100, first_steps=10, tolerance_pt=0.5)
    assert choice == 2 and len(rounds) == 1 and rounds[0].kept == [2]
    # A first budget at the full budget is the full sweep: one round, same rule.
    train, calls = _fake_curve({1: 0.7, 2: 0.9, 4: 0.9}, 50)
    choice, rounds = successive_halving([1, 2, 4], train, full_steps=50, first_steps=80, tolerance_pt=0.5)
    assert choice == 2 and [r.steps for r in rounds] == [50] and len(calls) == 3


def test_parse_ranks_and_child_mode(tmp_path):
    assert parse_ranks("8, 2,4,2") == [2, 4, 8]
    for bad in ("a,b", "0,2", ""):
        with pytest.raises(LoratuneError, match="--ranks"):
            parse_ranks(bad)
    run_dir = tmp_path / "lora"
    assert child_mode(run_dir, resume=False, overwrite=False) == "fresh"
    assert child_mode(run_dir, resume=True, overwrite=False) == "fresh"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    assert child_mode(run_dir, resume=False, overwrite=True) == "overwrite"
    assert child_mode(run_dir, resume=True, overwrite=False) == "overwrite"  # nothing to resume from
    (run_dir / "summary.json").write_text("{}")
    assert child_mode(run_dir, resume=True, overwrite=False) == "reuse"


def test_child_argv_forwards_train_flags_and_overrides():
    from loratune.cli import build_parser, train_flags

    cfg = build_config(model="m", dataset="d", r=4, progress=False, rslora=True, lr=0.005, group_by_length=False,
                       target_modules="query,value", output="elsewhere")  # fmt: skip
    argv = child_argv(cfg, output="o/x", method="lora", max_steps=3, resume=False, overwrite=True)
    assert argv[:4] == [sys.executable, "-m", "loratune.cli", "train"]
    joined = " ".join(argv[4:])
    for part in ("--model m", "--dataset d", "--r 4", "--no-progress", "--rslora", "--lr 0.005", "--output o/x",
                 "--method lora", "--max-steps 3", "--overwrite", "--no-group-by-length",
                 "--target-modules query,value"):  # fmt: skip
        assert part in joined
    assert "--seed" not in joined and "--resume" not in joined and "elsewhere" not in joined
    assert "--r 2" in " ".join(child_argv(cfg, r=2))
    assert "--resume" in child_argv(cfg, resume=True)
    # the child's own parser reads back the same configuration
    child = build_config(**train_flags(build_parser().parse_args(child_argv(cfg, output="elsewhere")[3:])))
    assert child == cfg


# ------------------------------------------------------------------------------------- end to end
def test_compare_full_vs_lora_each_in_its_own_process(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run(compare_args(tiny_model_dir, toy_data, out, "--r", "4", "--max-steps", "4"), capsys)
    assert code == 0, err
    assert "[1/2] full: started (pid" in stdout and "[2/2] lora: done in" in stdout
    result = json.loads((out / "comparison.json").read_text())
    runs = result["methods"]
    assert list(runs) == ["full", "lora"]
    assert runs["full"]["pid"] != runs["lora"]["pid"] and os.getpid() not in (runs["full"]["pid"], runs["lora"]["pid"])
    assert (out / "full" / "summary.json").is_file() and (out / "lora" / "summary.json").is_file()
    assert (out / "full" / "model").is_dir() and (out / "lora" / "adapter").is_dir()
    assert json.loads((out / "lora" / "adapter" / "adapter_config.json").read_text())["r"] == 4  # --r passed on
    for m in runs.values():
        for key in ("trainable_params", "trainable_percent", "peak_memory_bytes", "train_seconds",
                    "seconds_per_epoch", "examples_per_s", "artifact_bytes", "weights_bytes", "accuracy",
                    "macro_f1"):  # fmt: skip
            assert m[key] is not None and m[key] >= 0, key
        assert m["steps"] == 4 and m["peak_memory_bytes"] > 0
    assert runs["full"]["trainable_percent"] == 100 and runs["lora"]["trainable_percent"] < 1
    assert runs["lora"]["weights_bytes"] < runs["full"]["weights_bytes"] / 50
    rows = {row["measure"]: row for row in result["rows"]}
    assert list(rows) == ["trainable parameters", "training memory", "training time", "examples/s",
                          "storage per task", "test accuracy", "test macro-F1", "validation accuracy"]  # fmt: skip
    params = rows["trainable parameters"]
    assert params["ratio"] == pytest.approx(runs["lora"]["trainable_params"] / runs["full"]["trainable_params"])
    assert "diff_pt" in rows["test accuracy"] and "diff_pt" not in rows["training memory"]
    for method, m in runs.items():  # a validation split chose the checkpoint; the test split was scored once
        summary = json.loads((out / method / "summary.json").read_text())
        assert m["test_accuracy"] == summary["test"]["accuracy"] and summary["val_examples"] == 10

    table = [line for line in (out / "comparison.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| measure | full fine-tuning | LoRA r=4 | LoRA / full |"
    assert len(table) == 2 + len(rows) and all(line.count("|") == 5 for line in table)
    assert all(line.split("|")[4].strip().split()[0].endswith("x") for line in table[2:])  # the ratio column
    assert (out / "comparison.png").stat().st_size > 5000
    assert (out / "logs" / "full.log").is_file()

    # The same command again refuses the full folder; with --resume it reuses both finished runs.
    code, _, err = run(compare_args(tiny_model_dir, toy_data, out, "--r", "4", "--max-steps", "4"), capsys)
    one_line_error(code, err, "not empty", "--resume", "--overwrite")
    code, stdout, err = run(
        compare_args(tiny_model_dir, toy_data, out, "--r", "4", "--max-steps", "4", "--resume"), capsys
    )
    assert code == 0, err
    assert stdout.count("reusing the finished run") == 2 and "started" not in stdout
    again = json.loads((out / "comparison.json").read_text())["methods"]
    assert again["lora"]["accuracy"] == runs["lora"]["accuracy"] and again["lora"]["reused"]


def test_child_bad_input_is_its_one_line_error_with_exit_2(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run(compare_args(tiny_model_dir, toy_data, out, "--text-column", "body"), capsys)
    line = one_line_error(code, err, "full run:", "'body'")
    assert "lora" not in stdout  # the second run never started
    assert line.startswith("error: full run: ")


def test_a_compare_into_a_locked_folder_stops_at_once(tiny_model_dir, toy_data, tmp_path, capsys):
    from conftest import lock_held_elsewhere

    out = tmp_path / "cmp"
    with lock_held_elsewhere(out) as pid:
        code, _, err = run(compare_args(tiny_model_dir, toy_data, out, "--max-steps", "2"), capsys)
        one_line_error(code, err, f"--output {out} is in use by another loratune command (pid {pid})")
        assert [p.name for p in out.iterdir()] == [".loratune.lock"]


def test_bad_compare_options_fail_before_any_run(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    for extra, needle in (
        (["--ranks", "2,x"], "--ranks"),
        (["--methods", "full,qlora"], "--methods"),
        (["--method", "full"], "--methods"),
        (["--r", "0"], "--r must be >= 1"),
        (["--auto-rank", "--tolerance", "-1"], "--tolerance"),
        (["--resume", "--overwrite"], "exclude each other"),
    ):
        code, _, err = run(compare_args(tiny_model_dir, toy_data, out, *extra), capsys)
        one_line_error(code, err, needle)
    assert not out.exists()


def test_rank_sweep_writes_ranks_json_and_png(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "sweep"
    recipe = tmp_path / "recipe.yaml"  # a recipe reaches every child, flags override it
    recipe.write_text("max-steps: 3\nr: 16\nseed: 3\n")
    code, stdout, err = run(
        compare_args(tiny_model_dir, toy_data, out, "--config", str(recipe), "--ranks", "4,1"), capsys
    )
    assert code == 0, err
    assert json.loads((out / "rank-4" / "run_config.json").read_text())["seed"] == 3
    rows = json.loads((out / "ranks.json").read_text())["ranks"]
    assert [m["r"] for m in rows] == [1, 4]
    assert rows[0]["trainable_params"] < rows[1]["trainable_params"]
    assert all({"accuracy", "macro_f1", "train_seconds", "trainable_params", "pid"} <= m.keys() for m in rows)
    assert all(m["steps"] == 3 for m in rows)
    assert (out / "rank-1" / "adapter").is_dir() and (out / "rank-4" / "summary.json").is_file()
    assert (out / "ranks.png").stat().st_size > 5000
    assert not (out / "comparison.json").exists()  # --ranks alone is a sweep only
    assert "| r | trainable |" in stdout


def test_auto_rank_picks_a_candidate_trains_it_fully_and_writes_its_evidence(
    tiny_model_dir, toy_data, tmp_path, capsys
):  # fmt: skip
    out = tmp_path / "auto"
    # 96 rows less 10 held out for validation, batch 8, 1 epoch: a full run is 11 steps; the round runs 3.
    args = compare_args(tiny_model_dir, toy_data, out, "--auto-rank", "--ranks", "1,4", "--epochs", "1",
                        "--first-budget", "0.25", "--tolerance", "0.5")  # fmt: skip
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    result = json.loads((out / "auto_rank.json").read_text())
    assert result["candidates"] == [1, 4] and result["full_steps"] == 11 and result["first_steps"] == 3
    assert result["choice"] in (1, 4)
    first = result["rounds"][0]
    assert first["steps"] == 3 and [x["r"] for x in first["results"]] == [1, 4]
    assert all(x["steps"] == 3 for x in first["results"])
    accuracies = {x["r"]: x["accuracy"] for x in first["results"]}
    assert result["choice"] == choose_rank(accuracies, 0.5)  # two candidates: one round decides
    assert result["final"]["steps"] == 11 and result["final"]["r"] == result["choice"]
    adapter = out / "auto-rank" / "adapter"
    assert result["adapter"] == str(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == result["choice"]
    # the rounds are prefixes of one full-schedule run per rank: a rank costs the steps it reached
    reached, dirs = {}, {}
    for rnd in result["rounds"]:
        for x in rnd["results"]:
            reached[x["r"]] = x["round_steps"]
            dirs.setdefault(x["r"], set()).add(x["run_dir"])
    assert all(len(d) == 1 for d in dirs.values())  # continued, not restarted
    reached[result["choice"]] = 11
    assert result["cost"]["total_steps"] == sum(reached.values()) <= result["cost"]["full_sweep_steps"]
    assert "| round | steps | epochs | r | accuracy |" in stdout and f"choice r={result['choice']}" in stdout
    assert "| round | steps |" in result["evidence_table"]
    assert not (out / "comparison.json").exists() and not (out / "ranks.json").exists()

    # --resume reuses every run. The chosen rank's run has gone on to 11 steps since round 1, but
    # round 1 sees it as it was at 3 steps: its later evaluations do not count.
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    again = json.loads((out / "auto_rank.json").read_text())
    assert all(x["reused"] for rnd in again["rounds"] for x in rnd["results"])

    def seen(res: dict) -> list[list[tuple]]:
        return [
            [(x["r"], x["steps"], x["accuracy"], x["final_accuracy"]) for x in rnd["results"]] for rnd in res["rounds"]
        ]

    assert seen(again) == seen(result) and again["choice"] == result["choice"]


def test_measures_at_step_reads_the_evaluations_up_to_that_step(tmp_path):
    """A reused run that went past a round's step is measured as it was there, or refused in one line."""
    evals = [(3, 0.5, [[4, 0], [4, 0]]), (6, 0.75, [[3, 1], [1, 3]]), (9, 0.625, [[2, 2], [1, 3]]), (12, 0.875, None)]
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.write(json.dumps({"type": "train", "step": 1, "loss": 0.7}) + "\n")
        for step, acc, cm in evals:
            fh.write(json.dumps({"type": "eval", "step": step, "epoch": step / 12, "accuracy": acc,
                                 "macro_f1": acc, "confusion_matrix": cm}) + "\n")  # fmt: skip
    m = {"task": "seq-cls", "run_dir": str(tmp_path), "steps": 12, "epochs": 1.0, "accuracy": 0.875,
         "final_accuracy": 0.875, "majority_accuracy": 0.5, "train_seconds": 4.0}  # fmt: skip
    at9 = measures_at_step(m, 9)
    assert (at9["steps"], at9["accuracy"], at9["best_epoch"], at9["final_accuracy"]) == (9, 0.75, 0.5, 0.625)
    assert at9["train_seconds"] == 4.0  # the cost stays the run's
    assert measures_at_step(m, 3)["majority_accuracy"] == 0.5
    assert measures_at_step(m, 12) is m
    with pytest.raises(LoratuneError, match=r"no evaluation at step 7.*afresh with --overwrite"):
        measures_at_step(m, 7)


def test_ctrl_c_stops_the_child_cleanly_and_says_how_to_resume(tiny_model_dir, toy_data, tmp_path):
    """SIGINT to compare reaches the child once: it checkpoints and exits 130; compare exits 130 in one line."""
    out = tmp_path / "cmp"
    argv = compare_args(tiny_model_dir, toy_data, out, "--methods", "lora,full", "--epochs", "50", "--log-every", "1")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loratune.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = out / "full" / "metrics.jsonl"  # full runs first
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: the full run stopped with a checkpoint at step "), (
        stderr
    )
    assert lines[0].endswith("continue with the same command plus --resume")
    pid = int(stdout.split("full: started (pid ")[1].split(",")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child has exited (and was reaped)
    assert any((out / "full" / "checkpoints").iterdir())
    assert not (out / "lora").exists()  # the next run never started


def test_successive_halving_drops_nobody_while_every_rank_is_at_chance():
    """Short budgets that have not learned yet (majority-class accuracy) must not eliminate ranks."""
    final = {1: 0.80, 2: 0.86, 8: 0.862}
    calls = []

    def train(r: int, steps: int, index: int) -> dict[str, float]:
        calls.append((r, steps))
        learned = steps >= 40  # below 40 steps every rank predicts the majority class
        acc = final[r] if learned else 0.51 + 0.001 * (r == 1)  # noise favours r=1 while at chance
        return {"accuracy": acc, "macro_f1": 0.0, "majority_accuracy": 0.51}

    choice, rounds = successive_halving(final, train, full_steps=160, first_steps=10, tolerance_pt=0.5)
    assert [r.steps for r in rounds[:3]] == [10, 20, 40]
    assert rounds[0].kept == rounds[1].kept == [1, 2, 8]  # at chance: everyone stays
    assert choice == choose_rank(final, 0.5) == 2
    majority = __import__("loratune.compare", fromlist=["x"]).majority_accuracy
    assert majority([[0, 428], [0, 444]]) == 444 / 872 and majority(None) is None
