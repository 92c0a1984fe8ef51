"""Sandbox judge: runs one candidate program against its tests; the program runs in a forked, unprivileged child.
Standard library only. Started by hsd.tasks.code as `python -S -s -P sandbox_runner.py`, job as JSON on stdin.
"""

# The judge (this process) holds the tests and the expected outputs and never runs candidate code. The child
# executes the code, then answers calls: arguments go in and return values come back as plain data (tagged
# JSON), which the judge compares. Code in the child can crash, hang or lie, but it cannot reach the judge's
# comparison, its memory (another uid) or its result channel.

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback

_HEADER = struct.Struct("!I")
MAX_FRAME = 16 << 20  # bytes: a larger reply from the candidate is treated as a crash
_BIG_INT = 1 << 53


# ---------------------------------------------------------------- values as tagged JSON
class TooLarge(Exception):
    pass


def encode(value, budget: list[int] | None = None):
    """Plain data -> JSON-compatible tree; tuples, sets, dicts, bytes, complex and non-finite floats tagged.

    budget: a one-item list of how many more values may be encoded; TooLarge when it runs out.
    """
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise TooLarge
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        value = int(value)
        return value if -_BIG_INT < value < _BIG_INT else {"i": hex(value)}
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else {"x": repr(value)}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, complex):
        return {"c": [encode(value.real), encode(value.imag)]}
    if isinstance(value, list):
        return [encode(item, budget) for item in value]
    if isinstance(value, tuple):
        return {"t": [encode(item, budget) for item in value]}
    if isinstance(value, frozenset):
        return {"f": [encode(item, budget) for item in value]}
    if isinstance(value, set):
        return {"s": [encode(item, budget) for item in value]}
    if isinstance(value, dict):
        return {"d": [[encode(k, budget), encode(v, budget)] for k, v in value.items()]}
    if isinstance(value, bytes | bytearray):
        return {"b": bytes(value).hex()}
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return encode(value.tolist(), budget)
    raise TypeError(f"a value of type {kind.__name__} cannot be compared")


def digest(value) -> str:
    """Fingerprint of a value too large to send: a 64-bit hash that agrees with == on built-in values (sets and
    dicts in any order, 1 == 1.0), at C speed. Both runs use PYTHONHASHSEED=0, so it is stable across them."""
    kind = "sequence" if isinstance(value, list | tuple) else type(value).__name__
    size = len(value) if hasattr(value, "__len__") else 0
    return f"{kind}:{size}:{_hash(value) & 0xFFFFFFFFFFFFFFFF:016x}"


def _hash(value) -> int:
    try:
        return hash(value)
    except TypeError:
        pass
    if isinstance(value, list | tuple):
        return hash((type(value).__name__, *map(_hash, value)))
    if isinstance(value, dict):
        return hash(("dict", frozenset((_hash(k), _hash(v)) for k, v in value.items())))
    raise TypeError(f"a value of type {type(value).__name__} cannot be compared")


MAX_VALUES = 200_000  # a return value with more parts than this is compared by digest


def encode_result(value) -> dict:
    """{"ok": tree} for a value of ordinary size, {"digest": sha256} for a huge one."""
    try:
        return {"ok": encode(value, [MAX_VALUES])}
    except TooLarge:
        return {"digest": digest(value)}


def decode(tree):
    """Inverse of encode; builds only built-in values, so comparing them runs no foreign code."""
    if isinstance(tree, list):
        return [decode(item) for item in tree]
    if not isinstance(tree, dict):
        return tree
    (tag, body), *rest = tree.items()
    if rest:
        raise ValueError("malformed value")
    if tag == "t":
        return tuple(decode(item) for item in body)
    if tag == "s":
        return {decode(item) for item in body}
    if tag == "f":
        return frozenset(decode(item) for item in body)
    if tag == "d":
        return {decode(k): decode(v) for k, v in body}
    if tag == "c":
        return complex(decode(body[0]), decode(body[1]))
    if tag == "x":
        return float(body)
    if tag == "i":
        return int(body, 16)
    if tag == "b":
        return bytes.fromhex(body)
    raise ValueError(f"unknown tag {tag!r}")


def brief(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- frames over pipes, with deadlines
def send(fd: int, obj, deadline: float) -> None:
    data = json.dumps(obj).encode()
    data = memoryview(_HEADER.pack(len(data)) + data)
    while data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            raise TimeoutError
        data = data[os.write(fd, data[: 1 << 16]) :]


def read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, missing = [], size
    while missing:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(missing, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, deadline: float | None):
    (size,) = _HEADER.unpack(read_exact(fd, _HEADER.size, deadline))
    if size > MAX_FRAME:
        raise OverflowError(f"reply of {size} bytes exceeds {MAX_FRAME}")
    return json.loads(read_exact(fd, size, deadline))


# ---------------------------------------------------------------- isolation set up by the judge
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 1 << 12, 1 << 14, 1 << 18


def _mount_tmpfs(libc, path: str, size_mb: int, mode: str) -> None:
    options = f"size={size_mb}m,mode={mode}".encode()
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        raise OSError(f"mount tmpfs on {path} failed (errno {__import__('ctypes').get_errno()})")


def _closed_ancestor(path: str) -> str | None:
    """The top-most directory above `path` that other users may not enter (e.g. /root), if any."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:depth])
        try:
            if not os.stat(ancestor).st_mode & 0o001:
                return ancestor
        except OSError:
            return None
    return None


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def private_filesystem(job: dict) -> list[str]:
    """In a fresh mount namespace: empty size-capped tmpfs on /tmp, /var/tmp, /dev/shm and the work dir.

    Directories the interpreter needs but an unprivileged uid cannot enter (a Python under /root) are
    covered by an empty tmpfs too, with just the interpreter's own directories bound back into it.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    workdir, disk_mb = job["workdir"], job["disk_mb"]
    scratch = [p for p in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(p) and not os.path.islink(p)]
    needed = {os.path.realpath(p) for p in job.get("sys_path", []) + [sys.prefix, sys.exec_prefix]}
    needed = sorted(p for p in needed if os.path.isdir(p))
    needed = [p for p in needed if not any(q != p and _inside(p, q) for q in needed)]
    closed = sorted({a for a in map(_closed_ancestor, needed) if a and a not in scratch})
    covers = scratch + [c for c in closed if not any(_inside(c, s) for s in scratch)]
    rebind = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in needed if any(_inside(p, c) for c in covers)}
    for path in covers:
        _mount_tmpfs(libc, path, disk_mb, "1777" if path in scratch else "0755")
    for path, fd in rebind.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        source = f"/proc/self/fd/{fd}".encode()
        if libc.mount(source, path.encode(), None, MS_BIND | MS_REC, None) != 0:
            raise OSError(f"bind mount of {path} failed (errno {ctypes.get_errno()})")
        os.close(fd)
    if any(_inside(workdir, path) for path in scratch):
        os.makedirs(workdir, exist_ok=True)
    else:
        _mount_tmpfs(libc, workdir, disk_mb, "0700")
        covers.append(workdir)
    return covers


# ---------------------------------------------------------------- the candidate child
_BLOCKED_EVENTS = {
    "socket.__new__": "network access is not allowed",
    "ctypes.dlopen": "ctypes is not allowed",
    "ctypes.dlsym": "ctypes is not allowed",
    "ctypes.cdata": "ctypes is not allowed",
    "os.system": "starting programs is not allowed",
    "os.exec": "starting programs is not allowed",
    "os.posix_spawn": "starting programs is not allowed",
    "os.spawn": "starting programs is not allowed",
    "subprocess.Popen": "starting programs is not allowed",
    "pty.spawn": "starting programs is not allowed",
}
_PATH_EVENTS = {  # event -> positions of path arguments that must stay inside the work dir
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.utime": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guard(workdir: str) -> None:
    """Second line of defence (the first: uid, namespaces, rlimits): refuse the obvious escapes in-process."""
    root = os.path.realpath(workdir)
    parent_pid = os.getppid()

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        path = os.fsdecode(path)
        if path in ("/dev/null", "/dev/stdout", "/dev/stderr"):
            return True
        real = os.path.realpath(os.path.join(root, path))
        return real == root or real.startswith(root + os.sep)

    def guard(event: str, args: tuple) -> None:
        if event in _BLOCKED_EVENTS:
            raise PermissionError(_BLOCKED_EVENTS[event])
        if event in ("os.kill", "os.killpg") and (args[0] <= 0 or args[0] in (parent_pid, 1)):
            raise PermissionError("signalling processes outside the program is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writes and not inside(path):
                raise PermissionError(f"writing outside the working directory is not allowed: {path}")
        elif event in _PATH_EVENTS:
            for position in _PATH_EVENTS[event]:
                if position < len(args) and not inside(args[position]):
                    raise PermissionError("changing files outside the working directory is not allowed")

    sys.addaudithook(guard)


def _limit(job: dict) -> None:
    mb = 1 << 20
    cpu = math.ceil(job["total_timeout"]) + 1
    limits = [
        (resource.RLIMIT_AS, job["memory_mb"] * mb),
        (resource.RLIMIT_DATA, job["memory_mb"] * mb),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, job["file_mb"] * mb),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, job["nproc"]),
    ]
    for which, value in limits:
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        resource.setrlimit(which, (value, hard))


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("could not drop privileges")


def _prctl(option: int, value: int) -> None:
    """Linux prctl(option, value); nothing where libc or prctl is missing."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def candidate_main(job: dict, request_fd: int, reply_fd: int, output_fd: int) -> None:
    """In the forked child: confine, load the program, then answer calls until the judge closes the pipe."""
    _confine(job, request_fd, reply_fd, output_fd)
    deadline = time.monotonic() + 3600  # the judge enforces the real limits
    function = _load_entry_point(job, reply_fd, deadline)
    _answer_calls(function, request_fd, reply_fd, deadline)


def _confine(job: dict, request_fd: int, reply_fd: int, output_fd: int) -> None:
    """Own process group, default signals, only the pipes and the output open (stdin: /dev/null), in the
    working directory, no new privileges, resource limits, the job's uid, and the audit guard."""
    os.setpgid(0, 0)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with an error instead
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    for fd in sorted({request_fd, reply_fd}):
        os.set_inheritable(fd, False)
    keep = {0, 1, 2, request_fd, reply_fd}
    for fd in range(3, 1024):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.chdir(job["workdir"])
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: setuid binaries stay inert
    _limit(job)
    if job.get("uid") is not None:
        _drop_privileges(job["uid"])
    sys.dont_write_bytecode = True
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = sys.stdout
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    if job.get("audit_guard", True):
        _install_guard(job["workdir"])


def _load_entry_point(job: dict, reply_fd: int, deadline: float):
    """Run the prompt's prelude and the solution, and return its entry point; on failure, tell the judge
    why (`load_error`) and exit."""
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        for source, filename in ((job.get("prelude") or "", "<prompt>"), (job["code"], "<solution>")):
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - this is the sandbox
    except SyntaxError as exc:
        send(
            reply_fd, {"load_error": f"SyntaxError: {exc.msg} (line {exc.lineno})", "syntax": True}, deadline
        )
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - reported to the judge
        send(reply_fd, {"load_error": _describe(exc)}, deadline)
        os._exit(0)
    function = namespace.get(job["entry_point"])
    if not callable(function):
        send(
            reply_fd, {"load_error": f"the code does not define a function {job['entry_point']!r}"}, deadline
        )
        os._exit(0)
    return function


def _answer_calls(function, request_fd: int, reply_fd: int, deadline: float) -> None:
    """Say ready, then call `function` on each request's arguments and send back its result (or what it
    raised), until the judge closes the request pipe."""
    pid = os.getpid()
    send(reply_fd, {"ready": True}, deadline)
    while True:
        try:
            request = receive(request_fd, None)
        except (EOFError, OSError):
            os._exit(0)
        try:
            args = decode(request["args"])
            value = function(*args)
            reply = encode_result(value)
        except BaseException as exc:  # noqa: BLE001 - the candidate's error is a test result
            reply = {"raised": _describe(exc)}
        if os.getpid() != pid:  # a fork of the candidate returned here: it must not answer
            os._exit(0)
        try:
            send(reply_fd, reply, deadline)
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            send(reply_fd, {"raised": f"return value could not be sent: {type(exc).__name__}"}, deadline)


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text if len(text) <= 500 else text[:497] + "..."


# ---------------------------------------------------------------- the judge's view of the candidate
class Digest(str):
    """A return value too large to send, by fingerprint: equal only to a value with the same digest."""

    def __repr__(self) -> str:
        return f"<a large value, sha256 {self[:12]}...>"


class CandidateRaised(Exception):  # noqa: N818 - a result, not a judge error
    """The candidate's function raised; the message is its exception."""


class CandidateTimeout(BaseException):  # noqa: N818 - must escape `except Exception` in test code
    pass


class CandidateCrashed(BaseException):  # noqa: N818
    pass


class Candidate:
    def __init__(self, job: dict, output_fd: int):
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(request_w)
                os.close(reply_r)
                candidate_main(job, request_r, reply_w, output_fd)
            finally:
                os._exit(70)
        os.close(request_r)
        os.close(reply_w)
        self.request_fd, self.reply_fd = request_w, reply_r
        os.set_blocking(self.request_fd, False)
        self.alive = True
        self.last_call = ""

    def load(self, deadline: float) -> dict:
        return self._reply(deadline)

    def call(self, args_tree, deadline: float, shown_args=None):
        """Call the candidate's function with encoded arguments; its return value, decoded."""
        if not self.alive:
            raise CandidateCrashed("the program is no longer running")
        try:
            send(self.request_fd, {"args": args_tree}, deadline)
        except TimeoutError:
            self.kill()
            raise CandidateTimeout from None
        except OSError:
            self.kill()
            raise CandidateCrashed(self._exit_text()) from None
        reply = self._reply(deadline)
        if "raised" in reply:
            raise CandidateRaised(reply["raised"])
        try:
            if "digest" in reply:
                return Digest(str(reply["digest"]))
            return decode(reply["ok"])
        except (KeyError, ValueError, TypeError, IndexError, RecursionError) as exc:
            self.kill()
            raise CandidateCrashed(f"malformed reply from the program ({type(exc).__name__})") from None

    def _reply(self, deadline: float) -> dict:
        try:
            reply = receive(self.reply_fd, deadline)
        except TimeoutError:
            self.kill()
            raise CandidateTimeout from None
        except (EOFError, OSError):
            self.kill()
            raise CandidateCrashed(self._exit_text()) from None
        except (OverflowError, ValueError, RecursionError) as exc:
            self.kill()
            raise CandidateCrashed(f"unreadable reply from the program: {exc}") from None
        if not isinstance(reply, dict):
            self.kill()
            raise CandidateCrashed("malformed reply from the program")
        return reply

    def _exit_text(self) -> str:
        status = getattr(self, "status", None)
        if status is None:
            return "the program exited"
        if os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
            hint = {"SIGKILL": " (killed: memory, CPU or process limit)", "SIGXCPU": " (CPU time limit)"}
            return f"the program was killed by {name}{hint.get(name, '')}"
        return f"the program exited with code {os.WEXITSTATUS(status)}"

    def kill(self) -> None:
        if not self.alive:
            return
        self.alive = False
        for kill in (os.killpg, os.kill):  # its process group, then the process itself
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(self.pid, signal.SIGKILL)
        _, self.status = os.waitpid(self.pid, 0)
        for fd in (self.request_fd, self.reply_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------- test suites
class Run:
    """Outcome of the tests so far: counts, the first failure, and why the run stopped early."""

    def __init__(self, job: dict):
        self.job = job
        self.names: list[str] = []
        self.passed = 0
        self.first_failure: dict | None = None
        self.stopped: str | None = None
        self.total = 0
        self.total_deadline = time.monotonic() + job["total_timeout"]
        self.deadline = self.total_deadline

    def begin(self, name: str, limit: float | None = None) -> None:
        self.names.append(name)
        self.limit = self.job["timeout"] if limit is None else limit
        self.deadline = min(time.monotonic() + self.limit, self.total_deadline)

    def explain(self, error: BaseException) -> str:
        """Why the candidate stopped: which time limit it hit, or how it died."""
        if not isinstance(error, CandidateTimeout):
            return str(error)
        if self.deadline >= self.total_deadline:
            return f"total time limit exceeded ({self.job['total_timeout']:g} s for all tests)"
        return f"time limit exceeded ({self.limit:g} s per test)"

    def record(self, ok: bool, error: str = "", test: str | None = None) -> None:
        if ok:
            self.passed += 1
        elif self.first_failure is None:
            self.first_failure = {"index": len(self.names), "test": test or self.names[-1], "error": error}


def _stop_reason(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, CandidateTimeout) else "crash"


def outputs_equal(out, expected, atol: float, entry_point: str, mbpp: bool) -> bool:
    """EvalPlus's comparison: equality, special oracles for a few MBPP tasks, then float tolerance."""
    if mbpp:
        if entry_point in _MBPP_SET_EQUAL:
            try:
                return set(out) == set(expected)
            except TypeError:
                return False
        if entry_point in _MBPP_NOT_NONE:  # only whether a match was found matters
            want = expected if isinstance(expected, bool) else expected is not None
            return (out if isinstance(out, bool) else out is not None) == want
        if entry_point == "sum_div" and out == 0:
            return True
    try:
        if out == expected:
            return True
    except Exception:  # noqa: BLE001 - e.g. comparing sets of unhashables
        return False
    if atol == 0 and _is_floats(expected):
        atol = 1e-6
    return atol != 0 and type(out) is type(expected) and _close(out, expected, atol)


_MBPP_SET_EQUAL = {
    "similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
    "larg_nnum", "intersection_array", "find_dissimilar", "Diff",
}  # fmt: skip
_MBPP_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}


def _is_floats(value) -> bool:
    if isinstance(value, float):
        return True
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, float) for v in value)


def _close(out, expected, atol: float) -> bool:
    if isinstance(expected, bool) or isinstance(out, bool):
        return out == expected
    if isinstance(expected, int | float) and isinstance(out, int | float):
        return abs(out - expected) <= atol + 1e-7 * abs(expected)  # numpy.allclose's rule
    if isinstance(expected, list | tuple) and isinstance(out, list | tuple) and len(out) == len(expected):
        return all(_close(o, e, atol) for o, e in zip(out, expected))
    return False


def _matches(value, expected: dict, job: dict) -> bool:
    if "digest" in expected:
        return (value if isinstance(value, Digest) else digest(value)) == expected["digest"]
    if isinstance(value, Digest):
        return False
    return outputs_equal(
        value, decode(expected["ok"]), job.get("atol", 0), job["entry_point"], job.get("mbpp")
    )


def run_inputs(job: dict, candidate: Candidate, run: Run) -> list | None:
    """MBPP+-style tests: call the function on each input; compare with the expected output (if given).

    Without expected outputs, record the outputs (and how long each call took) instead.
    """
    expected = job.get("expected")
    outputs = [] if expected is None else None
    limits = job.get("test_timeouts") or [job["timeout"]] * len(job["inputs"])
    run.total = len(job["inputs"])
    for index, args_tree in enumerate(job["inputs"]):
        run.begin(
            f"{job['entry_point']}({', '.join(brief(a, 120) for a in decode(args_tree))})", limits[index]
        )
        started = time.monotonic()
        try:
            value = candidate.call(args_tree, run.deadline)
        except CandidateRaised as exc:
            if outputs is not None:
                outputs.append({"raised": str(exc), "time": time.monotonic() - started})
            run.record(outputs is not None or "raised" in expected[index], f"raised {exc}")
            continue
        except (CandidateTimeout, CandidateCrashed) as exc:
            run.stopped = _stop_reason(exc)
            run.record(False, run.explain(exc))
            return outputs
        if outputs is not None:
            output = {"digest": str(value)} if isinstance(value, Digest) else {"ok": encode(value)}
            outputs.append(dict(output, time=time.monotonic() - started))
            run.record(True)
        elif "raised" in expected[index]:
            run.record(False, f"expected an exception, got {brief(value)}")
        elif _matches(value, expected[index], job):
            run.record(True)
        else:
            want = "<a large value>" if "digest" in expected[index] else brief(decode(expected[index]["ok"]))
            run.record(False, f"expected {want}, got {brief(value)}")
    return outputs


class _StopRun(BaseException):
    pass


def _rewrite_check(test_source: str) -> tuple[ast.Module, list[str]]:
    """Each top-level statement of check() that uses `candidate` becomes one counted test."""
    module = ast.parse(test_source, "<test>")
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise ValueError("the test source does not define check(candidate)")
    check, texts, body = checks[-1], [], []
    for statement in check.body:
        uses = any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(statement))
        if not uses or isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body.append(statement)
            continue
        index = len(texts)
        texts.append(ast.get_source_segment(test_source, statement) or ast.unparse(statement))
        wrapped = ast.parse(
            f"__hsd_begin__({index})\n"
            "try:\n    pass\n"
            "except BaseException as __hsd_error__:\n    __hsd_fail__(__hsd_error__)\n"
            "else:\n    __hsd_pass__()\n"
        ).body
        wrapped[1].body = [statement]
        body.extend(wrapped)
    check.body = body
    return ast.fix_missing_locations(module), texts


def run_check(job: dict, candidate: Candidate, run: Run) -> None:
    """HumanEval-style tests: the dataset's check(candidate) runs here, in the judge, on a proxy."""
    module, texts = _rewrite_check(job["test"])
    run.total = len(texts)
    source_lines = job["test"].splitlines()

    def proxy(*args):
        tree = encode(list(args))
        candidate.last_call = f"{job['entry_point']}({', '.join(brief(a, 120) for a in args)})"
        value = candidate.call(tree, run.deadline)
        candidate.last_call += f" returned {brief(value)}"
        return value

    def begin(index: int) -> None:
        candidate.last_call = ""
        run.begin(texts[index])

    def fail(error: BaseException) -> None:
        line = _failing_line(error, source_lines)
        if isinstance(error, CandidateRaised):
            message = f"raised {error}"
        elif isinstance(error, CandidateTimeout | CandidateCrashed):
            message = run.explain(error)
        else:
            message = _describe(error)
        if isinstance(error, AssertionError) and candidate.last_call:
            message = f"AssertionError; last call: {candidate.last_call}"
        run.record(False, message, test=line or run.names[-1])
        if isinstance(error, CandidateTimeout | CandidateCrashed):
            run.stopped = _stop_reason(error)
            raise _StopRun from None

    namespace = {"__name__": "judge", "__hsd_begin__": begin, "__hsd_fail__": fail}
    namespace["__hsd_pass__"] = lambda: run.record(True)
    exec(compile(job.get("prelude") or "", "<prompt>", "exec"), namespace)  # noqa: S102 - trusted test data
    namespace[job["entry_point"]] = proxy  # tests may call the function by its name too
    exec(compile(module, "<test>", "exec"), namespace)  # noqa: S102
    try:
        namespace["check"](proxy)
    except _StopRun:
        return


def _failing_line(error: BaseException, source_lines: list[str]) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<test>"]
    if frames and frames[-1].lineno and frames[-1].lineno <= len(source_lines):
        return source_lines[frames[-1].lineno - 1].strip()
    return ""


# ---------------------------------------------------------------- main
def _kill_everything_of(uid: int | None) -> None:
    """Kill every process of the program's throwaway uid (even ones that left its process group), then reap."""
    if uid is not None:
        helper = os.fork()
        if helper == 0:
            try:
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # all processes of this uid, atomically with respect to fork
            finally:
                os._exit(0)
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if uid is not None else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def judge(job: dict) -> dict:
    result: dict = {"isolation": {"uid": job.get("uid"), "namespaces": job.get("namespaces", [])}}
    if job.get("private_mounts"):
        result["isolation"]["private_dirs"] = private_filesystem(job)
    os.makedirs(job["workdir"], exist_ok=True)
    if job.get("uid") is not None:
        os.chown(job["workdir"], job["uid"], job["uid"])
        os.chmod(job["workdir"], 0o700)
    output_path = os.path.join(job["workdir"], ".output")
    output_fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if job.get("uid") is not None:
        os.fchown(output_fd, job["uid"], job["uid"])
    for name in job.get("preload", []):  # modules the dropped uid may be unable to read from disk
        with contextlib.suppress(ImportError):
            __import__(name)
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the program's orphaned descendants become ours, to reap
    run = Run(job)
    candidate = Candidate(job, output_fd)  # forked before the tests are read: it never holds them
    os.close(output_fd)
    job.update(read_job_part())
    # PR_SET_DUMPABLE 0: the judge's memory (the expected outputs) is out of reach of same-uid processes
    _prctl(4, 0)
    try:
        load_deadline = min(time.monotonic() + job["timeout"], run.total_deadline)
        try:
            loaded = candidate.load(load_deadline)
        except (CandidateTimeout, CandidateCrashed) as exc:
            loaded = {"load_error": str(exc), "stopped": _stop_reason(exc)}
        if "load_error" in loaded:
            result.update(load_error=loaded["load_error"], syntax=bool(loaded.get("syntax")))
            result["stopped"] = loaded.get("stopped")
        elif job["mode"] == "check":
            run_check(job, candidate, run)
        else:
            result["outputs"] = run_inputs(job, candidate, run)
    finally:
        candidate.kill()
        _kill_everything_of(job.get("uid") if job.get("unique_uid") else None)
    result.update(
        tests=run.total, passed=run.passed, first_failure=run.first_failure,
        stopped=result.get("stopped") or run.stopped,
    )  # fmt: skip
    try:
        with open(output_path, "rb") as handle:
            result["output"] = handle.read(job["output_limit"]).decode("utf-8", errors="replace")
    except OSError:
        result["output"] = ""
    return result


JOB_HEADER = struct.Struct("!Q")


def read_job_part() -> dict:
    """One length-prefixed JSON part of the job from stdin, read exactly (nothing beyond it is buffered)."""
    (size,) = JOB_HEADER.unpack(read_exact(0, JOB_HEADER.size, None))
    return json.loads(read_exact(0, size, None))


def main() -> None:
    job = read_job_part()  # the program and the limits; the tests follow once the program's process exists
    sys.path[:] = [p for p in job.get("sys_path", []) if p] or sys.path
    out = os.dup(1)
    try:
        result = judge(job)
    except BaseException as exc:  # noqa: BLE001 - a judge failure, reported as such
        result = {"judge_error": "".join(traceback.format_exception(exc))[-3000:]}
    data = memoryview(json.dumps(result).encode())
    while data:
        data = data[os.write(out, data) :]
    os._exit(0)


if __name__ == "__main__":
    main()
