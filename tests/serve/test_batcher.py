"""The micro-batcher: requests that wait together share one call, a bad one fails alone, close drains."""

from __future__ import annotations

import threading

import pytest

from loratune.serve.batcher import MicroBatcher


class Recorder:
    """A batched call that records its batches; the first one waits for ``release`` (so others queue)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list[tuple[str, str]]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        self.release.wait(10)
        if any(name == "bad" for name, _ in items):
            raise KeyError("bad adapter")
        return [f"{name}:{text}" for name, text in items]


def test_requests_that_wait_together_share_one_call():
    run = Recorder()
    sizes: list[int] = []
    batcher = MicroBatcher(run, window_ms=200, max_batch=64, on_batch=sizes.append)
    first = batcher.submit([("a", "0")])
    assert run.entered.wait(10)  # the worker is busy with the first request: the next ones queue up
    rest = [batcher.submit([("a", str(i)), ("b", str(i))]) for i in range(1, 6)]
    run.release.set()
    assert first.result(10) == ["a:0"]
    for i, future in enumerate(rest, start=1):
        assert future.result(10) == [f"a:{i}", f"b:{i}"]  # each request gets its own slice, in order
    assert [len(b) for b in run.batches] == [1, 10]
    assert sizes == [1, 10]
    batcher.close(10)


def test_a_batch_stops_at_max_batch_and_a_large_request_runs_whole():
    run = Recorder()
    batcher = MicroBatcher(run, window_ms=200, max_batch=4)
    blocker = batcher.submit([("a", "x")])
    assert run.entered.wait(10)
    futures = [batcher.submit([("a", str(i))] * n) for i, n in enumerate([3, 2, 6])]
    run.release.set()
    blocker.result(10)
    assert [len(f.result(10)) for f in futures] == [3, 2, 6]
    assert [len(b) for b in run.batches] == [1, 3, 2, 6]  # 3+2 > 4 and 6 > 4: each ran in its own batch
    batcher.close(10)


def test_a_bad_request_fails_alone():
    run = Recorder()
    batcher = MicroBatcher(run, window_ms=200)
    blocker = batcher.submit([("a", "x")])
    assert run.entered.wait(10)
    good, bad, also_good = (batcher.submit([(n, "t")]) for n in ("a", "bad", "b"))
    run.release.set()
    blocker.result(10)
    assert good.result(10) == ["a:t"] and also_good.result(10) == ["b:t"]
    with pytest.raises(KeyError, match="bad adapter"):
        bad.result(10)
    batcher.close(10)


def test_close_finishes_what_was_queued():
    run = Recorder()
    batcher = MicroBatcher(run, window_ms=1)
    blocker = batcher.submit([("a", "x")])
    assert run.entered.wait(10)
    queued = [batcher.submit([("a", str(i))]) for i in range(3)]
    closer = threading.Thread(target=batcher.close, args=(10,))
    closer.start()
    run.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert blocker.result(0) == ["a:x"] and [f.result(0) for f in queued] == [["a:0"], ["a:1"], ["a:2"]]


def test_a_lone_request_runs_without_waiting_the_window():
    batcher = MicroBatcher(lambda items: [text for _, text in items], window_ms=60_000)
    for i in range(3):  # one at a time: nothing to wait for (a 60 s window would time the result out)
        assert batcher.submit([("a", str(i))]).result(timeout=30) == [str(i)]
    batcher.close(10)
