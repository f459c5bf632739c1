"""Micro-batching: concurrent requests that arrive within a short window share one mixed forward.

One worker thread takes the first waiting request, then keeps taking requests for up to ``window_ms``
milliseconds, or until the batch holds ``max_batch`` items, and runs them all as one call of ``run``
(``Runtime.predict_mixed``). The window is for concurrent traffic: when the previous batch held one
request and no other is waiting, a request runs at once, so a lone client never waits for company
that is not coming. Each request gets its own slice of the results through a
``concurrent.futures.Future``. When a batch fails, its requests run again one by one, so a bad request
fails alone and never takes its neighbours down with it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

Item = tuple[str, str]


@dataclass
class _Job:
    items: list[Item]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Runs ``run(items) -> results`` (one result per item) over batches of concurrent requests.

    Args:
        run: the batched call, e.g. ``Runtime.predict_mixed``.
        window_ms: how long the first request of a batch waits for others to join it.
        max_batch: at most this many items per batch (a larger request runs alone, whole).
        on_batch: called with each batch's item count (for metrics).
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Any]],
        *,
        window_ms: float = 5.0,
        max_batch: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        self.window = max(0.0, window_ms) / 1000
        self.max_batch = max(1, max_batch)
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._concurrent = False  # whether the last batch held several requests
        self._thread = threading.Thread(target=self._work, name="loratune-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[Item]) -> Future:
        """Queue one request's items; the future's result is their results, in order."""
        job = _Job(list(items))
        self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Finish every request queued so far, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        held: _Job | None = None
        while True:
            first = held or self._queue.get()
            held = None
            if first is None:
                return
            jobs, closing, held = self._gather(first)
            self._run(jobs)
            if closing:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool, _Job | None]:
        """``first`` and the requests that join it within the window: (jobs, stop after them, the next
        batch's first job when one did not fit)."""
        jobs, size = [first], len(first.items)
        wait = self.window if self._concurrent or not self._queue.empty() else 0.0
        deadline = time.monotonic() + wait
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True, None
            if size + len(job.items) > self.max_batch:
                return jobs, False, job
            jobs.append(job)
            size += len(job.items)
        return jobs, False, None

    def _run(self, jobs: list[_Job]) -> None:
        """One call for all ``jobs``; on failure, each job alone (so only the bad ones fail)."""
        items = [item for job in jobs for item in job.items]
        self._concurrent = len(jobs) > 1
        try:
            results = list(self.run(items))
        except BaseException as err:  # handed to the waiting request
            if len(jobs) > 1:
                for job in jobs:
                    self._run([job])
            else:
                jobs[0].future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        lo = 0
        for job in jobs:
            job.future.set_result(results[lo : lo + len(job.items)])
            lo += len(job.items)
