"""Deadline workers: results come back, overruns are killed and replaced, deaths and errors are reported."""

from __future__ import annotations

import os
import threading

import pytest

from hsd.tasks.pool import DeadlineWorker, WorkerError, WorkerPool, WorkerTimeout


@pytest.fixture(scope="module")
def worker():
    worker = DeadlineWorker()
    yield worker
    worker.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_call_returns_the_function_result(worker):
    assert worker.call("math", "gcd", 12, 18, timeout=30) == 6


def test_overrunning_call_is_killed_within_its_limit_and_the_worker_replaced(worker):
    worker.call("math", "gcd", 1, 1, timeout=30)  # started and ready
    old_pid = worker._process.pid
    # the 60 s sleep is stopped at its 0.5 s limit (how soon: benchmarks/limits.py)
    with pytest.raises(WorkerTimeout):
        worker.call("time", "sleep", 60, timeout=0.5)
    assert not _alive(old_pid)
    assert worker.call("math", "gcd", 9, 6, timeout=30) == 3
    assert worker._process.pid != old_pid


def test_worker_that_dies_mid_call_raises_worker_error_and_recovers(worker):
    with pytest.raises(WorkerError, match="died"):
        worker.call("os", "_exit", 3, timeout=30)
    assert worker.call("math", "gcd", 4, 6, timeout=30) == 2


def test_exception_in_the_function_is_a_worker_error_naming_it(worker):
    with pytest.raises(WorkerError, match="ZeroDivisionError"):
        worker.call("operator", "truediv", 1, 0, timeout=30)


def test_pool_serves_threads_in_parallel_each_with_its_own_worker():
    pool = WorkerPool()
    both_hold_one = threading.Barrier(2, timeout=60)  # a pool that made one caller wait would break it
    pids = []

    def call() -> None:
        with pool.worker() as worker:
            both_hold_one.wait()
            pids.append(worker.call("os", "getpid", timeout=30))

    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(pids)) == 2 and len(pool._all) == 2
    finally:
        pool.close()
