"""``python -m loratune``: a plain process exits through ``sys.exit``; a torchrun rank skips the teardown."""

import runpy

import pytest

import loratune.cli

RANK_ENV = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


class Exited(Exception):
    pass


def run_module(monkeypatch, code: int) -> tuple[str, int]:
    """How ``python -m loratune`` ended when its command returned ``code``: ("os._exit" or "sys.exit", code)."""

    def os_exit(status: int) -> None:
        raise Exited(status)

    monkeypatch.setattr(loratune.cli, "main", lambda: code)
    monkeypatch.setattr("os._exit", os_exit)
    try:
        runpy.run_module("loratune", run_name="__main__")
    except Exited as err:
        return "os._exit", err.args[0]
    except SystemExit as err:
        return "sys.exit", err.code
    raise AssertionError("python -m loratune did not exit")


def test_a_plain_process_exits_through_the_interpreter(monkeypatch):
    for name in RANK_ENV:
        monkeypatch.delenv(name, raising=False)
    assert run_module(monkeypatch, 2) == ("sys.exit", 2)


@pytest.mark.parametrize("code", [0, 2])
def test_a_torchrun_rank_exits_with_its_code_without_the_teardown(monkeypatch, code):
    for name, value in RANK_ENV.items():
        monkeypatch.setenv(name, value)
    assert run_module(monkeypatch, code) == ("os._exit", code)
