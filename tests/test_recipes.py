"""The shipped recipes are valid, and the no-option default is the demo recipe."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from loratune.errors import LoratuneError
from loratune.train.config import build_config, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_builds(recipe):
    cfg = build_config(recipe)
    assert cfg.epochs >= 1 and cfg.output


def test_default_is_the_demo_recipe():
    default, demo = build_config(), build_config(Path(__file__).resolve().parents[1] / "recipes/demo.yaml")
    assert default.learning_rate == demo.learning_rate
    assert {**asdict(default), "lr": None} == {**asdict(demo), "lr": None}


def test_tutorial_recipe_matches_the_tutorial():
    cfg = build_config(next(r for r in RECIPES if r.stem == "imdb-bert-base"))
    assert (cfg.model, cfg.dataset, cfg.train_size, cfg.eval_size, cfg.max_length) == (
        "bert-base-uncased", "imdb", 5000, 1000, 256)  # fmt: skip
    assert (cfg.r, cfg.alpha, cfg.dropout, cfg.target_modules) == (8, 32, 0.1, ["query", "value"])
    assert (cfg.learning_rate, cfg.warmup_ratio, cfg.max_grad_norm, cfg.epochs, cfg.batch_size) == (
        5e-4, 0.1, 1.0, 3, 16)  # fmt: skip


def test_flags_override_recipe_and_data_flags_drop_demo_sizes(tmp_path):
    cfg = build_config(RECIPES[0], r=4, epochs=1)
    assert cfg.r == 4 and cfg.epochs == 1
    own = build_config(dataset=str(tmp_path))
    assert own.train_size is None and own.eval_size is None  # the demo's subsample is for tweets only


def test_bad_recipes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(LoratuneError, match="not readable YAML"):
        load_recipe(bad)
    with pytest.raises(LoratuneError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(LoratuneError, match="mapping"):
        load_recipe(bad)


def test_train_file_alone_is_not_mixed_with_the_demo_dataset():
    from loratune.train.config import DEMO, build_config

    cfg = build_config(train_file="train.csv", eval_file="test.csv")
    assert cfg.dataset is None and cfg.train_file == "train.csv" and cfg.train_size is None
    demo = build_config()
    assert demo.dataset == "tweets" and demo.train_size == DEMO["train_size"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("pad_to_multiple_of", 0, "--pad-to-multiple-of must be >= 1, got 0"),
        ("pause_at_step", 0, "--pause-at-step must be >= 1, got 0"),
        ("kernels", "fast", "--kernels must be one of lean, torch, got 'fast'"),
        ("padding", "max", "--padding must be one of longest, max_length, got 'max'"),
    ],
)
def test_new_options_are_checked_with_the_fix_in_the_message(option, value, message):
    with pytest.raises(LoratuneError) as err:
        build_config(**{option: value})
    assert str(err.value) == message
