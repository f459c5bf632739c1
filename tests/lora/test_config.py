"""lora/config.py: LoraConfig's checks and the one rule that says which module a name names."""

from __future__ import annotations

import pytest

from loratune.lora.config import LoraConfig, module_matches, module_within

PATH = "bert.encoder.layer.0.attention.self.query"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("query", True),  # the last part
        ("self.query", True),  # a dotted suffix
        (PATH, True),  # the whole path
        ("uery", False),  # not a whole part
        ("attention", False),  # an ancestor is not the module
        ("value", False),
        (r"layer\.[01]\.attention\.self\.query", True),  # a regex for a suffix, as PEFT allows
        (r"layer\.[23]\.attention\.self\.query", False),
        ("query(", False),  # not a valid regex, and not a suffix
    ],
)
def test_module_matches(name, expected):
    assert module_matches(PATH, name) is expected


def test_module_within_is_the_module_or_one_of_its_ancestors():
    assert module_within("classifier.dense", ["classifier"]) and module_within("classifier", ["classifier"])
    assert module_within("roberta.pooler.dense", ["pooler"]) and not module_within("bert.encoder", ["pooler"])


def test_rank_and_alpha_patterns_use_the_same_rule():
    config = LoraConfig(r=8, alpha=16, target_modules=["query"], rank_pattern={"layer.1.attention.self.query": 2},
                        alpha_pattern={r"layer\.[01]\.attention\.self\.query": 4})  # fmt: skip
    assert config.rank_for(PATH) == 8 and config.rank_for(PATH.replace("layer.0", "layer.1")) == 2
    assert config.scaling_for(PATH) == 4 / 8 and config.scaling_for(PATH.replace("layer.0", "layer.2")) == 16 / 8


@pytest.mark.parametrize(
    "field,pattern",
    [("rank_pattern", {"query": "2"}), ("rank_pattern", {"query": True}), ("alpha_pattern", {"query": [1]}),
     ("alpha_pattern", {"query": 0}), ("alpha_pattern", {"query": float("nan")})],
)  # fmt: skip
def test_pattern_values_are_checked(field, pattern):
    with pytest.raises(ValueError, match=rf"{field}\['query'\] must be"):
        LoraConfig(target_modules=["query"], **{field: pattern})
