"""The cost marks of conftest.py name real tests and declared marks, so that a renamed test cannot slip into
the fast tier unnoticed."""

from __future__ import annotations

import re

import pytest

from conftest import COST_BY_FIXTURE, COST_BY_TEST, SLOW, TESTS


def test_every_test_named_for_its_cost_exists():
    missing = []
    for key in COST_BY_TEST:
        file, name = key.split("::")
        source = (TESTS / file).read_text() if (TESTS / file).is_file() else ""
        if not re.search(rf"^def {re.escape(name)}\(", source, flags=re.MULTILINE):
            missing.append(key)
    assert missing == []


def test_every_cost_mark_is_declared(pytestconfig: pytest.Config):
    declared = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    used = set(COST_BY_FIXTURE.values()) | {mark for marks in COST_BY_TEST.values() for mark in marks} | SLOW
    assert used | {"slow", "server"} <= declared
