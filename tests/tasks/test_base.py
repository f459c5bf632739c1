"""The metric rule that keeps the best checkpoint."""

from __future__ import annotations

import math

from loratune.tasks.base import Metric


def test_a_better_metric_wins_whatever_the_loss():
    f1 = Metric("f1")
    assert f1.improves({"f1": 0.5, "loss": 0.9}, {"f1": 0.4, "loss": 0.1})
    assert not f1.improves({"f1": 0.3, "loss": 0.01}, {"f1": 0.4, "loss": 0.1})
    ppl = Metric("perplexity", higher_is_better=False)
    assert ppl.improves({"perplexity": 9.0, "loss": 2.2}, {"perplexity": 10.0, "loss": 2.3})


def test_a_tie_keeps_the_lower_eval_loss_not_the_first():
    f1 = Metric("f1")
    first = {"f1": 0.0, "loss": 0.279}
    assert f1.improves({"f1": 0.0, "loss": 0.188}, first)  # the later, better-fitting weights are kept
    assert not f1.improves({"f1": 0.0, "loss": 0.30}, first)
    assert not f1.improves({"f1": 0.0, "loss": 0.279}, first)  # an exact tie keeps the first
    assert not f1.improves({"f1": 0.0}, first) and not f1.improves({"f1": 0.0, "loss": math.nan}, first)
    acc = Metric("accuracy")
    assert acc.improves({"accuracy": 0.5, "loss": 0.6}, {"accuracy": 0.5, "loss": 0.7})
