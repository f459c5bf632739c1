"""A registry of random adapters on the tiny BERT (two classifiers and a tagger) and their offline answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ADAPTERS, TEXTS, make_adapter
from loratune.artifacts import load_artifact
from loratune.tasks import get_task


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    for seed, (name, (task, labels, r, targets)) in enumerate(ADAPTERS.items()):
        run = root / name
        make_adapter(run / "adapter", tiny_model_dir, task, labels, r, targets, seed)
        (run / "summary.json").write_text(json.dumps({"metric": "accuracy", "best": {"accuracy": 0.5 + seed / 10}}))
    return root


@pytest.fixture(scope="module")
def offline(registry) -> dict[str, list[dict]]:
    """Each adapter's predictions for ``TEXTS``, loaded on its own by ``load_artifact``."""
    out = {}
    for name in ADAPTERS:
        loaded = load_artifact(registry / name / "adapter")
        task = get_task(loaded.info["task"])
        out[name] = task.predict(loaded.model, loaded.tokenizer, TEXTS, loaded.info, max_length=32)
    return out
