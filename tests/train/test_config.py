"""train/config.py: one table of options serves the flags, the recipes, the checks and compare's children."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from loratune.cli import build_parser, main, train_flags
from loratune.errors import LoratuneError
from loratune.train.config import RunConfig, as_flags, build_config, options, resumable_options

# every field away from its default: a new option must be added here, and so is tested
NON_DEFAULT = {
    "task": "seq-cls", "model": "m", "revision": "v1", "dataset": "d", "dataset_revision": "r2",
    "train_file": "t.csv", "eval_file": "e.csv", "text_column": "sentence", "label_column": "y", "encoding": "latin-1",
    "train_size": 100, "eval_size": 50, "val_size": 20, "label_all_tokens": True, "max_length": 64,
    "padding": "max_length", "group_by_length": False, "pad_to_multiple_of": 8, "method": "full", "r": 4,
    "alpha": 8.0, "dropout": 0.05, "target_modules": ["query", "key"], "rslora": True, "loraplus_ratio": 16.0,
    "epochs": 2, "max_steps": 9,
    "pause_at_step": 3, "batch_size": 4, "grad_accum": 2, "lr": 0.001, "weight_decay": 0.1, "warmup_ratio": 0.2,
    "max_grad_norm": 0.5, "seed": 7, "precision": "fp32", "device": "cpu", "gradient_checkpointing": True,
    "deterministic": True, "kernels": "torch", "malloc_tuning": False, "trust_remote_code": True, "output": "o",
    "resume": True, "overwrite": False, "eval_every": 5, "save_every": 6, "early_stopping_patience": 2, "log_every": 3,
    "report_to": "tensorboard", "dist_timeout": 90, "progress": False,
}  # fmt: skip


def test_every_option_round_trips_through_flags_and_recipes(tmp_path):
    assert set(NON_DEFAULT) == set(options())
    expected = RunConfig(**NON_DEFAULT)
    parsed = build_parser().parse_args(["train", *as_flags(NON_DEFAULT)])
    assert build_config(**train_flags(parsed)) == expected
    recipe = tmp_path / "all.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in NON_DEFAULT.items() if k not in ("resume", "overwrite")}))
    assert build_config(recipe, resume=True) == expected


def test_number_like_strings_are_numbers_and_wrong_types_name_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 5e-4\nr: '8'\nrslora: 'yes'\ntarget_modules: query, value\n")  # YAML reads 5e-4 as a str
    cfg = build_config(recipe)
    assert (cfg.lr, cfg.r, cfg.rslora, cfg.target_modules) == (5e-4, 8, True, ["query", "value"])
    for text, message in [
        ("seed: abc", f"'seed' in recipe {recipe} must be an integer, got 'abc'"),
        ("r: eight", f"'r' in recipe {recipe} must be an integer, got 'eight'"),
        ("target_modules: 5", f"'target_modules' in recipe {recipe} must be a list of layer names or a string, got 5"),
        ("lr: .nan", f"'lr' in recipe {recipe} must be a number, got nan"),
        ("r: 0", f"'r' in recipe {recipe} must be >= 1, got 0"),
        ("model: [a]", f"'model' in recipe {recipe} must be a string, got ['a']"),
    ]:
        recipe.write_text(text + "\n")
        with pytest.raises(LoratuneError) as err:
            build_config(recipe)
        assert str(err.value) == message


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--r", "eight"], "error: --r must be an integer, got 'eight'"),
        (["--lr", "fast"], "error: --lr must be a number, got 'fast'"),
        (["--max-grad-norm", "-1"], "error: --max-grad-norm must be >= 0, got -1"),
        (["--dropout", "1"], "error: --dropout must be in [0, 1), got 1"),
        (["--loraplus-ratio", "0"], "error: --loraplus-ratio must be > 0, got 0"),
        (["--method", "half"], "error: --method must be one of lora, full, got 'half'"),
        (["--frobnicate"], "error: unrecognized arguments: --frobnicate; see loratune --help"),
    ],
)
def test_bad_flags_are_one_line_errors_with_exit_2(flags, message, capsys):
    assert main(["train", *flags]) == 2
    assert capsys.readouterr().err.strip() == message


def test_options_that_may_change_on_resume_are_listed_in_the_table():
    assert set(resumable_options()) >= {"eval_every", "log_every", "progress", "pause_at_step", "resume", "device"}
    assert not {"r", "lr", "loraplus_ratio", "train_size", "eval_size", "seed", "model", "dataset"} & set(
        resumable_options()
    )


def test_loraplus_ratio_is_a_float_option_that_resume_may_not_change():
    from loratune.train.config import resume_conflicts

    assert build_config(loraplus_ratio="16").loraplus_ratio == 16.0
    assert build_config().loraplus_ratio is None
    assert as_flags({"loraplus_ratio": 16.0}) == ["--loraplus-ratio", "16.0"]
    saved = dataclasses.asdict(RunConfig())
    assert resume_conflicts(saved, RunConfig(loraplus_ratio=16.0)) == ["--loraplus-ratio (unset) -> 16"]
    saved = {k: v for k, v in saved.items() if k != "loraplus_ratio"}  # a run_config.json from before the option
    assert resume_conflicts(saved, RunConfig()) == []


def _outside(option, kind):
    """A value just outside each bound of ``option``, and the bound itself when it is allowed."""
    step = 1 if kind == "int" else 1e-3
    cases = []
    if option.low is not None:
        cases.append((option.low - (0 if option.low_open else step), False))
        if not option.low_open:
            cases.append((option.low, True))
    if option.high is not None:
        cases.append((option.high + (0 if option.high_open else step), False))
    return cases


def test_every_range_in_the_table_is_enforced_at_its_bounds():
    checked = []
    for name, (option, kind, _default) in options().items():
        for value, allowed in _outside(option, kind):
            value = int(value) if kind == "int" else value
            if allowed:
                assert getattr(build_config(**{name: value}), name) == value
            else:
                with pytest.raises(LoratuneError, match=rf"^--{name.replace('_', '-')} must be "):
                    build_config(**{name: value})
            checked.append(name)
    assert {"max_grad_norm", "weight_decay", "warmup_ratio", "dropout", "alpha", "log_every", "lr", "r"} <= set(checked)


def test_help_shows_each_option_s_default_and_range(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("LoRA rank (default 8; >= 1)", "LoRA dropout (default 0.1; in [0, 1))", "(default 1; >= 0)"):
        assert shown in text


def test_task_defaults_apply_per_method_where_nothing_sets_the_option(tmp_path, monkeypatch):
    from loratune.compare import child_argv
    from loratune.tasks import TokenClsTask

    monkeypatch.setattr(TokenClsTask, "defaults", {"lora": {"lr": "2e-3", "r": 16}, "full": {"lr": 1e-4}})
    data = {"task": "token-cls", "train_file": "t.conll"}
    cfg = build_config(**data)
    assert (cfg.lr, cfg.r) == (2e-3, 16)
    assert (build_config(**data, method="full").lr, build_config(**data, method="full").r) == (1e-4, 8)
    assert build_config(**data, lr=5e-4).lr == 5e-4  # a flag wins
    recipe = tmp_path / "r.yaml"
    recipe.write_text("r: 4\n")
    assert build_config(recipe, **data).r == 4  # so does the recipe
    assert build_config(train_file="t.csv").lr is None  # other tasks keep theirs
    parent = build_config(**data, apply_task_defaults=False)  # compare's: each child applies its method's
    assert (parent.lr, parent.r) == (None, 8)
    assert "--lr" not in child_argv(parent, method="full", output="o")


def test_one_plain_target_name_is_a_name_and_regex_characters_make_a_regex():
    """``--target-modules c_attn`` means the layers named c_attn (a regex would have to match the whole path)."""
    from loratune.train.config import coerce

    assert coerce("target_modules", "c_attn") == ["c_attn"]
    assert coerce("target_modules", "attention.self.query") == ["attention.self.query"]
    assert coerce("target_modules", "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert coerce("target_modules", r".*\.(q|v)_proj") == r".*\.(q|v)_proj"
    assert coerce("target_modules", "all-linear") == "all-linear"
