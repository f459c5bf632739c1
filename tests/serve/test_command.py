"""``loratune serve``: flag checks, --preload, and a SIGTERM that lets the requests in flight finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import TEXTS, assert_close, free_port
from loratune.cli import main
from loratune.serve.command import preload, refused_warnings
from loratune.serve.runtime import Runtime


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--port", "http"], "--port must be a number, got 'http'"),
        (["--port", "70000"], "--port must be >= 0 and <= 65535"),
        (["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
        (["--batch-window-ms", "-1"], "--batch-window-ms must be >= 0"),
        (["--adapter-memory-mb", "nan"], "--adapter-memory-mb must be a finite number, got 'nan'"),
        (["--adapter-memory-mb", "inf"], "--adapter-memory-mb must be a finite number, got 'inf'"),
        (["--drain-timeout", "inf"], "--drain-timeout must be a finite number, got 'inf'"),
        (["--api-key-all"], "--api-key-all needs a key: pass --api-key or set LORATUNE_API_KEY"),
        (["--preload", "nope"], "unknown adapter 'nope'"),
    ],
)
def test_bad_flags_are_one_line_errors(registry, capsys, monkeypatch, flags, words):
    monkeypatch.delenv("LORATUNE_API_KEY", raising=False)
    assert main(["serve", "--adapters", str(registry), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_registry_is_a_one_line_error(tmp_path, capsys):
    assert main(["serve", "--adapters", str(tmp_path / "none")]) == 2
    assert "is not a folder; pass a folder of adapters" in capsys.readouterr().err


def test_preload_names_makes_only_them_available(registry):
    runtime = Runtime(registry)
    preload(runtime, "sent, ner")
    assert sorted(runtime.loaded()) == ["ner", "sent"]
    assert {r["name"]: r["available"] for r in runtime.list()} == {"ner": True, "sent": True, "topic": False}
    everything = Runtime(registry)
    preload(everything, "all")
    assert sorted(everything.loaded()) == ["ner", "sent", "topic"]


SLOW_SERVE = """
import sys, time
from loratune.cli import main
from loratune.serve.runtime import Runtime
predict = Runtime.predict_mixed
Runtime.predict_mixed = lambda self, items, **kw: (time.sleep(1.5), predict(self, items, **kw))[1]
sys.exit(main(sys.argv[1:]))
"""


def test_the_start_warns_of_each_folder_it_does_not_serve(registry, tmp_path):
    import shutil

    shutil.copytree(registry / "sent", tmp_path / "reg" / "sent")
    shutil.copytree(registry / "sent", tmp_path / "reg" / "sst2.v1")
    (line,) = refused_warnings(Runtime(tmp_path / "reg"))
    assert line.startswith("warning: not serving 'sst2.v1': adapter name 'sst2.v1' is not a safe identifier")


def test_sigterm_lets_the_request_in_flight_finish(registry, offline):
    """``loratune serve`` whose predictions take 1.5 s more: a SIGTERM during one still answers it."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", SLOW_SERVE, "serve", "--adapters", str(registry), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base, server)
        answer: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answer.append(
            httpx.post(base + "/v1/predict", json={"adapter": "sent", "texts": TEXTS[:1]}, timeout=60)))  # fmt: skip
        request.start()
        time.sleep(0.5)  # the request is in its 1.5 s prediction
        server.send_signal(signal.SIGTERM)
        request.join(60)
        assert server.wait(60) in (0, -signal.SIGTERM)  # uvicorn >= 0.29 re-raises the signal once drained
    finally:
        server.kill()
    assert answer and answer[0].status_code == 200
    record = answer[0].json()["predictions"][0]
    assert record.pop("adapter") == "sent"
    assert_close(record, offline["sent"][0])
    out, err = server.communicate()
    assert f"on http://127.0.0.1:{port}" in out and "Traceback" not in err


def _wait_for(base: str, server: subprocess.Popen) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.communicate()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


def test_port_0_prints_the_bound_port_and_loopback_refuses_other_hosts(registry):
    cmd = [sys.executable, "-m", "loratune", "serve", "--adapters", str(registry), "--port", "0", "--log-level",
           "warning", "--allow-origin", "https://app.example"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        port = int(line.rsplit("http://127.0.0.1:", 1)[1].split()[0])
        assert port != 0, line
        base = f"http://127.0.0.1:{port}"
        _wait_for(base, server)
        assert httpx.get(base + "/health", headers={"host": "attacker.example"}).status_code == 421
        assert httpx.get(base + "/health", headers={"origin": "https://app.example"}).status_code == 200
        assert httpx.get(base + "/health", headers={"origin": "https://evil.example"}).status_code == 403
    finally:
        server.terminate()
        server.wait(60)
