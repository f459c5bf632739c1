"""``compare --auto-rank``: pick a LoRA rank by successive halving, then train it fully.

Each round trains every surviving rank for a budget of optimizer steps, as a prefix of one
full-schedule run per rank (``train --pause-at-step``, continued with ``--resume`` while the rank
survives), so a dropped rank costs only the steps it ran and the chosen rank's run is the result.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratune.compare import scores
from loratune.compare.runner import Runner
from loratune.fsutil import atomic_write_json
from loratune.tasks import Metric
from loratune.train.setup import load_data

ACCURACY = Metric("accuracy")


def choose_rank(
    values: Mapping[int, float], tolerance_pt: float, *, metric: str = "accuracy", higher_is_better: bool = True
) -> int:
    """The smallest rank whose ``metric`` is within ``tolerance_pt`` of the best one (in percent points for a
    fraction such as accuracy or F1, in the metric's own units otherwise, e.g. perplexity).

    >>> choose_rank({1: 0.80, 2: 0.862, 4: 0.866, 8: 0.87}, 0.5)
    4
    >>> choose_rank({1: 9.1, 2: 8.45, 4: 8.3}, 0.2, metric="perplexity", higher_is_better=False)
    2
    """
    return scores.best_within(values, tolerance_pt, metric=metric, higher_is_better=higher_is_better)


@dataclass
class Round:
    """One round of successive halving: every surviving rank trained for ``steps`` optimizer steps."""

    index: int
    steps: int
    results: dict[int, dict[str, Any]]  # rank -> measures (at least the metric's value)
    best: int = 0  # the rank with this round's best metric
    choice: int = 0  # the smallest rank within tolerance of ``best``
    kept: list[int] = field(default_factory=list)  # the ranks that go on to the next round


def successive_halving(
    candidates: Sequence[int],
    train: Callable[[int, int, int], Mapping[str, Any]],
    *,
    full_steps: int,
    first_steps: int,
    tolerance_pt: float,
    metric: str = "accuracy",
    higher_is_better: bool = True,
) -> tuple[int, list[Round]]:
    """Pick a LoRA rank without training every candidate fully; return ``(rank, rounds)``.

    The rule is the one a full sweep would apply: the smallest rank whose ``metric`` (accuracy by default) is
    within ``tolerance_pt`` of the best (``choose_rank``). Successive halving estimates it cheaply:

    1. Train every candidate for ``first_steps`` optimizer steps (``train(rank, steps, round)``
       returns its measures incl. accuracy; ``auto_rank`` makes each round a prefix of one
       full-schedule run per rank, continued from its checkpoint in the next round).
    2. A round whose best accuracy is within ``tolerance_pt`` of always predicting the majority
       class (``majority_accuracy`` in the measures) has not learned yet and tells the ranks apart
       by noise: nobody is dropped, the budget doubles.
    3. Otherwise keep the better half by accuracy (ties go to the smaller rank) plus the current choice, the
       smallest rank within tolerance of this round's best, since that is the answer so far. If this
       does not shrink the field (e.g. two candidates), the current choice alone goes on.
    4. Double the budget (at most ``full_steps``) and repeat with the survivors until one is left
       or a round ran with the full budget; the last round's choice is the answer.

    With five candidates, ``first_steps = full_steps / 16`` and prefix rounds, a rank costs the
    steps it reached: e.g. 2 ranks dropped at 1/4, 1 at 1/2 and the last 2 at the full budget cost
    3 full runs (5 for the sweep), and the chosen rank's run is the final adapter.
    Short-budget accuracy is a noisy estimate: a rank that learns slowly can be dropped early, and
    ``tolerance_pt`` should exceed the eval set's noise (one example of 1000 is 0.1 pt).
    """
    survivors = sorted(set(candidates))
    if len(survivors) == 1:
        return survivors[0], []
    steps = max(1, min(first_steps, full_steps))
    rounds: list[Round] = []
    while True:
        results = {r: dict(train(r, steps, len(rounds) + 1)) for r in survivors}
        acc = {r: float(results[r][metric]) for r in survivors}
        sign = 1.0 if higher_is_better else -1.0
        rnd = Round(len(rounds) + 1, steps, results, best=min(acc, key=lambda r: (-sign * acc[r], r)))
        rnd.choice = choose_rank(acc, tolerance_pt, metric=metric, higher_is_better=higher_is_better)
        rounds.append(rnd)
        if steps >= full_steps:  # the full budget: this round is the sweep itself
            rnd.kept = [rnd.choice]
            return rnd.choice, rounds
        majority = [results[r].get("majority_accuracy") for r in survivors]
        chance = max((m for m in majority if m is not None), default=None)
        if metric == "accuracy" and chance is not None and acc[rnd.best] <= chance + tolerance_pt / 100:
            rnd.kept = list(survivors)  # not learned yet: the ranks differ by noise only
            steps = min(2 * steps, full_steps)
            continue
        better_half = sorted(survivors, key=lambda r: (-sign * acc[r], r))[: math.ceil(len(survivors) / 2)]
        kept = sorted({*better_half, rnd.choice})
        rnd.kept = kept if len(kept) < len(survivors) else [rnd.choice]
        if len(rnd.kept) == 1:
            return rnd.choice, rounds
        survivors, steps = rnd.kept, min(2 * steps, full_steps)


def full_budget(cfg) -> tuple[int, int]:
    """(optimizer steps of one full run, steps per epoch) for ``cfg``, from its train split's size."""
    data = load_data(cfg)
    batches = math.ceil(len(data.train) / cfg.batch_size)
    per_epoch = max(1, math.ceil(batches / cfg.grad_accum))
    total = cfg.epochs * per_epoch
    return (min(total, cfg.max_steps) if cfg.max_steps else total), per_epoch


def _evidence_table(rounds: Sequence[Round], per_epoch: int) -> str:
    names = next(iter(rounds[0].results.values()))["metrics"] if rounds else ["accuracy"]
    head = " | ".join(scores.label(n) for n in names)
    lines = [f"| round | steps | epochs | r | {head} | |", "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for rnd in rounds:
        for r, m in sorted(rnd.results.items()):
            marks = [x for x, ok in (("best", r == rnd.best), ("choice", r == rnd.choice)) if ok]
            marks.append("kept" if r in rnd.kept and len(rnd.kept) > 1 else "" if r in rnd.kept else "dropped")
            values = " | ".join(scores.text(n, m.get(n)) for n in names)
            lines.append(
                f"| {rnd.index} | {rnd.steps} | {rnd.steps / per_epoch:.2f} | {r} | {values} "
                f"| {', '.join(x for x in marks if x)} |"
            )
    return "\n".join(lines)


class _PrefixRuns:
    """One full-schedule run per rank under OUT/rounds, each continued to a later step when asked."""

    def __init__(self, runner: Runner, full_steps: int) -> None:
        self.runner, self.full_steps = runner, full_steps
        self.reached: dict[int, int] = {}  # rank -> optimizer steps its run has done so far

    def __call__(self, r: int, steps: int, index: int) -> dict[str, Any]:
        """Continue rank ``r``'s run to ``steps`` (a prefix of the full run); its measures there."""
        pause = steps if steps < self.full_steps else None
        m = self.runner.run(
            f"round{index}-r{r}",
            self.runner.out / "rounds" / f"r{r}",
            f"[round {index}, {steps} steps] r={r}",
            continue_run=r in self.reached,
            method="lora",
            r=r,
            pause_at_step=pause,
        )
        m["round_steps"] = steps
        m["new_steps"] = steps - self.reached.get(r, 0)
        self.reached[r] = steps
        return m


def _reason(choice: int, rounds: Sequence[Round], tolerance_pt: float) -> str:
    if not rounds:
        return f"r={choice} is the only candidate"
    last = rounds[-1]
    best = last.results[last.best]
    metric = best["metric"]
    return (
        f"r={choice} is the smallest rank within {tolerance_pt:g} {scores.unit(metric)} of the best "
        f"{scores.label(metric)} in round {last.index} ({scores.text(metric, best[metric])} at r={last.best}, "
        f"{last.steps} steps)"
    )


def _finish(runs: _PrefixRuns, choice: int, rounds: Sequence[Round]) -> dict[str, Any]:
    """The chosen rank's run continued to the full budget, copied (without checkpoints) to OUT/auto-rank."""
    if runs.reached.get(choice, 0) < runs.full_steps:
        final = runs(choice, runs.full_steps, len(rounds) + 1)
    else:
        final = next(rnd.results[choice] for rnd in reversed(rounds) if choice in rnd.results)
    source, final_dir = Path(final["run_dir"]), runs.runner.out / "auto-rank"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    shutil.copytree(source, final_dir, ignore=shutil.ignore_patterns("checkpoints"))
    print(f"[final] r={choice}: its run reached the full budget; copied {source} to {final_dir}")
    return dict(final, run_dir=str(final_dir), copied_from=str(source))


def _cost(rounds: Sequence[Round], final: dict[str, Any], final_steps: int, sweep_steps: int) -> dict[str, Any]:
    """Optimizer steps and training seconds of the rounds and the final stretch, against the full sweep."""
    choice = int(final["r"])
    round_steps = sum(m["new_steps"] for rnd in rounds for m in rnd.results.values())
    round_seconds = {r: float(m["train_seconds"]) for rnd in rounds for r, m in rnd.results.items()}
    return {
        "round_steps": round_steps,
        "final_steps": final_steps,
        "total_steps": round_steps + final_steps,
        "full_sweep_steps": sweep_steps,
        "fraction_of_full_sweep": round((round_steps + final_steps) / sweep_steps, 4),
        # a continued run's train_seconds is cumulative: the last value per rank is its whole cost
        "round_train_seconds": round(sum(round_seconds.values()), 2),
        "final_train_seconds": round(final["train_seconds"] - round_seconds.get(choice, 0.0), 2),
    }


def _round_records(rounds: Sequence[Round], per_epoch: int) -> list[dict[str, Any]]:
    return [
        {
            "round": rnd.index,
            "steps": rnd.steps,
            "epochs": round(rnd.steps / per_epoch, 4),
            "best": rnd.best,
            "choice": rnd.choice,
            "kept": rnd.kept,
            "results": [{"r": r, **m} for r, m in sorted(rnd.results.items())],
        }
        for rnd in rounds
    ]


def auto_rank(
    runner: Runner,
    candidates: Sequence[int],
    budget: tuple[int, int],
    *,
    tolerance_pt: float,
    first_budget: float,
    metric: Metric = ACCURACY,
) -> dict:
    """Successive halving over ``candidates``, then the chosen rank trained fully into OUT/auto-rank.

    ``budget`` is ``full_budget(cfg)``: (steps of one full run, steps per epoch); ``metric``: the task's.
    """
    full_steps, per_epoch = budget
    first_steps = max(1, math.ceil(first_budget * full_steps))
    _print_plan(candidates, budget, first_steps, tolerance_pt, metric)
    runs = _PrefixRuns(runner, full_steps)
    choice, rounds = successive_halving(
        candidates,
        runs,
        full_steps=full_steps,
        first_steps=first_steps,
        tolerance_pt=tolerance_pt,
        metric=metric.name,
        higher_is_better=metric.higher_is_better,
    )
    table, reason = _evidence_table(rounds, per_epoch), _reason(choice, rounds, tolerance_pt)
    if rounds:
        print("\n" + table + "\n")
    print(f"auto-rank: choice r={choice}: {reason}", flush=True)
    final_steps = full_steps - runs.reached.get(choice, 0)  # the stretch the chosen run still has to go
    final = _finish(runs, choice, rounds)
    cost = _cost(rounds, final, final_steps, len(candidates) * full_steps)
    adapter = Path(final["run_dir"]) / "adapter"
    result = {
        "method": "successive halving (see loratune.compare.successive_halving)",
        "candidates": list(candidates),
        "tolerance_pt": tolerance_pt,
        "full_steps": full_steps,
        "steps_per_epoch": per_epoch,
        "first_steps": first_steps,
        "rounds": _round_records(rounds, per_epoch),
        "evidence_table": table,
        "choice": choice,
        "reason": reason,
        "adapter": str(adapter),
        "final": final,
        "cost": cost,
    }
    atomic_write_json(runner.out / "auto_rank.json", result)
    _print_outcome(result, runner.out / "auto_rank.json")
    return result


def _print_plan(
    candidates: Sequence[int], budget: tuple[int, int], first_steps: int, tolerance_pt: float, metric: Metric
) -> None:
    full_steps, per_epoch = budget
    print(
        f"auto-rank: candidates r={','.join(map(str, candidates))}; full budget {full_steps} steps "
        f"({full_steps / per_epoch:.2f} epochs of {per_epoch}); first round {first_steps} steps, doubling; "
        f"tolerance {tolerance_pt:g} {scores.unit(metric.name)} of {scores.label(metric.name)}",
        flush=True,
    )


def _print_outcome(result: dict[str, Any], path: Path) -> None:
    choice, final, cost = result["choice"], result["final"], result["cost"]
    shown = ", ".join(f"{scores.label(n)} {scores.text(n, final.get(n))}" for n in final["metrics"])
    print(
        f"auto-rank: r={choice} trained with the full budget: {shown}; adapter in {result['adapter']}\n"
        f"auto-rank: cost {cost['round_steps']} steps in rounds + {cost['final_steps']} final = "
        f"{cost['total_steps']} steps, vs {cost['full_sweep_steps']} for the full sweep "
        f"({cost['fraction_of_full_sweep']:.2f}x); wrote {path}",
        flush=True,
    )
