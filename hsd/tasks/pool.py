"""Persistent worker processes with a wall-clock limit per call: an overrunning worker is killed and replaced.
Works from any thread or process (no signals), so a hung check can never hold a reward worker forever.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hsd.tasks.sandbox_runner import read_exact

_FRAME_HEADER = struct.Struct("!Q")
_READY = "ready"
STARTUP_TIMEOUT = 120.0  # seconds a fresh worker may take to import its modules before a call counts


class WorkerTimeout(Exception):
    """The call ran past its wall-clock limit; the worker was killed (and a replacement started)."""


class WorkerError(Exception):
    """The worker could not produce a result: it died, failed to start, or the function raised."""


def _write_frame(fd: int, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_FRAME_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def _read_frame(fd: int, deadline: float | None) -> Any:
    (size,) = _FRAME_HEADER.unpack(read_exact(fd, _FRAME_HEADER.size, deadline))
    return pickle.loads(read_exact(fd, size, deadline))


class DeadlineWorker:
    """One child Python process that runs `module.function(*args, **kwargs)` calls, one at a time."""

    def __init__(self, preload: tuple[str, ...] = ()):
        self.preload = tuple(preload)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._ready = False
        self._start()

    def _start(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-c", "import hsd.tasks.pool as p; p.serve()", *self.preload]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
        )
        self._ready = False

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        process.wait()

    def _ensure_ready(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._kill()
            self._start()
        if self._ready:
            return
        try:
            message = _read_frame(self._process.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT)
        except (TimeoutError, EOFError, pickle.UnpicklingError) as exc:
            self._kill()
            self._start()
            raise WorkerError(
                f"worker failed to start ({type(exc).__name__}; preload={self.preload})"
            ) from exc
        if message != _READY:
            self._kill()
            self._start()
            raise WorkerError(f"worker failed to start: {message}")
        self._ready = True

    def call(self, module: str, function: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """Run module.function(*args, **kwargs) in the worker; at most `timeout` seconds of wall clock.

        Waiting for a fresh worker to start (imports) does not count against `timeout`.
        Raises WorkerTimeout on overrun, WorkerError if the worker died or the function raised.
        """
        with self._lock:
            self._ensure_ready()
            process = self._process
            try:
                _write_frame(process.stdin.fileno(), (module, function, args, kwargs))
                ok, value = _read_frame(process.stdout.fileno(), time.monotonic() + timeout)
            except TimeoutError:
                self._kill()
                self._start()  # warm a replacement right away
                raise WorkerTimeout(f"{module}.{function} ran past {timeout:g} s; worker killed") from None
            except (EOFError, BrokenPipeError, OSError, pickle.UnpicklingError) as exc:
                code = process.poll()
                self._kill()
                self._start()
                raise WorkerError(
                    f"worker died during {module}.{function} (exit code {code}): {exc!r}"
                ) from exc
            if not ok:
                raise WorkerError(f"{module}.{function} raised {value}")
            return value

    def close(self) -> None:
        with self._lock:
            self._kill()


class WorkerPool:
    """Idle workers of one kind, handed out one per concurrent caller (threads each get their own)."""

    def __init__(self, preload: tuple[str, ...] = ()):
        self.preload = tuple(preload)
        self._idle: list[DeadlineWorker] = []
        self._all: list[DeadlineWorker] = []
        self._lock = threading.Lock()

    @contextmanager
    def worker(self):
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = DeadlineWorker(self.preload)
                self._all.append(worker)
        try:
            yield worker
        finally:
            with self._lock:
                self._idle.append(worker)

    def call(self, module: str, function: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
        with self.worker() as worker:
            return worker.call(module, function, *args, timeout=timeout, **kwargs)

    def warm(self, count: int = 1) -> None:
        """Start `count` workers now and wait until they have imported their modules."""
        workers = []
        with self._lock:
            while len(self._idle) < count:
                worker = DeadlineWorker(self.preload)
                self._all.append(worker)
                self._idle.append(worker)
            workers = list(self._idle[:count])
        for worker in workers:
            with worker._lock:
                worker._ensure_ready()

    def close(self) -> None:
        with self._lock:
            for worker in self._all:
                worker.close()
            self._all.clear()
            self._idle.clear()


_pools: dict[tuple[str, ...], WorkerPool] = {}
_pools_pid = os.getpid()
_pools_lock = threading.Lock()


def shared_pool(preload: tuple[str, ...]) -> WorkerPool:
    """The process-wide pool of workers that preload these modules (a forked child starts afresh)."""
    global _pools_pid
    with _pools_lock:
        if os.getpid() != _pools_pid:  # inherited through fork: those workers belong to the parent
            _pools.clear()
            _pools_pid = os.getpid()
        if preload not in _pools:
            _pools[preload] = WorkerPool(preload)
        return _pools[preload]


def close_shared_pools() -> None:
    with _pools_lock:
        if os.getpid() == _pools_pid:
            for pool in _pools.values():
                pool.close()
        _pools.clear()


atexit.register(close_shared_pools)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def serve() -> None:
    """Worker side: preload modules, then answer calls read from stdin until it closes."""
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        try:
            for name in sys.argv[1:]:
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            _write_frame(out_fd, f"preload failed: {type(exc).__name__}: {exc}")
            return
        _write_frame(out_fd, _READY)
        while True:
            module, function, args, kwargs = _read_frame(in_fd, None)
            try:
                result = (True, getattr(importlib.import_module(module), function)(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                result = (False, f"{type(exc).__name__}: {exc}")
            try:
                _write_frame(out_fd, result)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                _write_frame(out_fd, (False, f"result could not be sent: {exc}"))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent closed the pipes: nothing left to do
