"""One run per output directory: `output_dir/.hsd-run.lock`, held with `flock` and naming its owner.

The kernel drops an `flock` when its process dies, however it dies, so a lock file that nobody holds is
stale: the next run takes it over with a warning naming the dead owner. A lock that is held names the
running owner (pid, host, start time) in the error of the run that finds it. Within one process a new
lock on the same directory replaces the old one (a trainer built again on the same output_dir).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path

from hsd.errors import UserError

LOCK_NAME = ".hsd-run.lock"
_HELD: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()  # this process's locks


def _owner(text: str) -> str:
    """'pid 123 on host h, started 2026-01-01 12:00:00 UTC' from a lock file's JSON (or its raw text)."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return f"an unreadable owner record {text[:80]!r}"


def _release(fd: int, path: str) -> None:
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    os.close(fd)


class RunLock:
    """Holds output_dir's run lock until `release()`, garbage collection or the end of the process."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key].release()
        fd = self._lock_current_file()
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            print(
                f"hsd: warning: taking over the stale run lock {self.path} of {_owner(previous)}, "
                "which is no longer running",
                file=sys.stderr,
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._finalizer = weakref.finalize(self, _release, fd, str(self.path))
        _HELD[key] = self

    def _lock_current_file(self) -> int:
        """An fd holding flock on the file now at self.path (retrying if it is replaced meanwhile)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(os.read(fd, 4096).decode(errors="replace").strip())
                os.close(fd)
                raise UserError(
                    f"output_dir {self.path.parent} is in use by another run ({owner}); wait for it to "
                    "finish or choose another output_dir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # its owner removed the file while we waited for it: lock the new one

    def release(self) -> None:
        """Remove the lock file and let the next run in."""
        self._finalizer()
