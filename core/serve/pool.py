"""A fixed pool of worker threads, each holding its own state (a loaded Engine), fed by a bounded queue.

``submit`` never blocks: when every worker is busy and ``queue_size`` jobs already wait, it raises
``Busy`` (the service answers 429 with Retry-After). A job is ``fn(state, deadline)``; the deadline
(``time.monotonic()`` seconds) covers waiting in the queue too, and a job whose deadline passed before a
worker took it is not run.
"""

from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
import time
from typing import Any, Callable, Generic, TypeVar

State = TypeVar("State")


class Busy(Exception):
    """The queue is full; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the service is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class TimeLimit(Exception):
    """The request ran past its time limit (raised inside the job, e.g. from a step callback)."""


class WorkerPool(Generic[State]):
    def __init__(self, make_state: Callable[[], State], *, workers: int = 1, queue_size: int = 8) -> None:
        self._make_state = make_state
        self._jobs: queue.Queue = queue.Queue(maxsize=max(queue_size, 0) + workers)  # the check is in submit
        self._queue_size = queue_size
        self._threads = [threading.Thread(target=self._serve, name=f"guardkit-worker-{i}", daemon=True)
                         for i in range(workers)]
        self._ready = 0
        self._busy = 0
        self._lock = threading.Lock()
        self._seconds = 10.0  # running mean of a job's seconds, for Retry-After
        self.startup_error: str | None = None
        self._started = threading.Semaphore(0)

    # ----------------------------------------------------------------------- life
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until every worker has built its state (or failed to); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        for _ in self._threads:
            left = None if end is None else max(0.0, end - time.monotonic())
            if not self._started.acquire(timeout=left):
                return False
        for _ in self._threads:
            self._started.release()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Let running jobs finish (up to ``timeout``); waiting jobs are cancelled."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)  # stop markers (the queue was just drained)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def workers(self) -> int:
        return len(self._threads)

    @property
    def ready(self) -> int:
        return self._ready

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    # ----------------------------------------------------------------------- jobs
    def submit(self, fn: Callable[[State, float], Any], *, time_limit: float = math.inf) -> concurrent.futures.Future:
        """Queue ``fn(state, deadline)``; raises ``Busy`` at once when the queue is full."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        deadline = time.monotonic() + time_limit
        with self._lock:
            idle = self._ready - self._busy - self._jobs.qsize()
            full = self._jobs.qsize() >= self._queue_size and idle <= 0
            if full:
                raise Busy(self.retry_after())
            try:
                self._jobs.put_nowait((future, fn, deadline))
            except queue.Full:
                raise Busy(self.retry_after()) from None
        return future

    def retry_after(self) -> int:
        backlog = self._jobs.qsize() + self._busy
        return max(1, math.ceil(self._seconds * max(backlog, 1) / self.workers))

    def _serve(self) -> None:
        try:
            state = self._make_state()
        except Exception as exc:  # noqa: BLE001 - reported by /healthz and to every job
            self.startup_error = f"worker failed to start: {exc}"
            state = None
        with self._lock:
            self._ready += state is not None
        self._started.release()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, deadline = job
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._busy += 1
            started = time.monotonic()
            try:
                if state is None:
                    raise RuntimeError(self.startup_error or "worker failed to start")
                if started > deadline:
                    raise TimeLimit("the request waited past its time limit")
                future.set_result(fn(state, deadline))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - started)
