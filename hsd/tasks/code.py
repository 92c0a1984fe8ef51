"""Code: run a candidate program against HumanEval- or MBPP+-style tests in a subprocess sandbox.
Namespaces (network, pid, mount), a throwaway uid, rlimits and deadlines; see docs/verifiers.md for the limits.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from hsd.tasks import sandbox_runner
from hsd.tasks.math import as_text
from hsd.tasks.problem import UNCOMPUTED, Verdict

RUNNER = Path(sandbox_runner.__file__).resolve()
# Loaded by the judge before the program starts when the program's uid may not be able to read the interpreter.
PRELOAD = ("collections", "itertools", "functools", "heapq", "bisect", "math", "cmath", "re", "string", "typing",
           "fractions", "decimal", "statistics", "hashlib", "copy", "operator", "random", "datetime", "json",
           "array", "textwrap", "unicodedata", "calendar")  # fmt: skip
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str | bytes, entry_point: str | None = None) -> str | None:
    """The program in a completion: the last fenced block (the last defining `entry_point` if given).

    Python-tagged or untagged fences count; an unclosed final fence runs to the end of the text. Without any
    fence the whole completion is taken as code. None when there is nothing but whitespace.
    """
    text = as_text(completion)
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    blocks = [code for lang, code in blocks if lang in ("", "python", "py", "python3")]
    if entry_point:
        defining = [code for code in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", code)]
        blocks = defining or blocks
    code = blocks[-1] if blocks else text
    return code if code.strip() else None


# ---------------------------------------------------------------- isolation available on this machine
@lru_cache(maxsize=1)
def isolation() -> dict[str, Any]:
    """What the sandbox can use here: an `unshare` prefix (namespaces) and a uid range to drop to.

    HSD_SANDBOX_NAMESPACES=0 in the environment turns the namespaces off (uid, rlimits and guard remain).
    """
    root = os.geteuid() == 0
    unshare = shutil.which("unshare") if os.environ.get("HSD_SANDBOX_NAMESPACES", "1") != "0" else None
    candidates: list[list[str]] = []
    if unshare and sys.platform.startswith("linux"):
        if root:
            candidates += [
                [unshare, "--net", "--pid", "--mount", "--fork", "--kill-child"],
                [unshare, "--net", "--pid", "--fork", "--kill-child"],
                [unshare, "--net"],
            ]
        else:
            user = [unshare, "--user", "--map-root-user"]
            candidates += [user + ["--net", "--pid", "--mount", "--fork", "--kill-child"], user + ["--net"]]
    prefix: list[str] = []
    for command in candidates:
        try:
            probe = subprocess.run(command + [sys.executable, "-c", "pass"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            prefix = command
            break
    return {"prefix": prefix, "uids": _uid_range() if root else None, "root": root}


def _uid_range() -> tuple[int, int]:
    """A range of uids to run candidates as: unused by real accounts, mapped in this user namespace."""
    try:
        lines = Path("/proc/self/uid_map").read_text().split()
        spans = [(int(lines[i]), int(lines[i]) + int(lines[i + 2])) for i in range(0, len(lines), 3)]
    except (OSError, ValueError, IndexError):
        spans = [(0, 65536)]
    for start, end in spans:
        low, high = max(start, 1 << 20), min(end, 1 << 30)
        if high - low >= 1 << 16:
            return low, high
    return 65534, 65535  # only `nobody`: sandboxes running at the same time share it


def _pick_uid(uids: tuple[int, int]) -> int:
    low, high = uids
    return random.SystemRandom().randrange(low, high)


def _kill_uid(uid: int) -> None:
    """Kill every process still running as this throwaway uid (escaped grandchildren, in any session)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = re.search(r"^Uid:\s+(\d+)", text, re.MULTILINE)
        if match and int(match.group(1)) == uid:
            try:
                os.kill(int(status.parent.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass


# ---------------------------------------------------------------- tests: HumanEval and MBPP+ forms
_MBPP_TUPLE_ARGS = {2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630,
                    726, 740, 744, 809}  # fmt: skip
_MBPP_ARGS_OF_TUPLES = {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}
_MBPP_FIRST_OF_TUPLES = {75, 413, 444, 753}
_MBPP_SECOND_TUPLE = {106, 750}
_MBPP_FIRST_TUPLE = {250, 307, 405, 446, 617, 720, 763, 808}
_MBPP_TUPLE_OF_TUPLES = {259, 401, 445}
_MBPP_ALL_TUPLES = {580, 615, 791}


def _deep_tuple(value):
    return tuple(_deep_tuple(v) for v in value) if isinstance(value, list) else value


def mbpp_arguments(task_id: str, args: list) -> list:
    """JSON cannot hold tuples, sets or complex numbers: rebuild the argument types MBPP+ tasks expect."""
    try:
        number = int(str(task_id).rsplit("/", 1)[-1])
    except ValueError:
        return args
    args = list(args)
    if number in _MBPP_TUPLE_ARGS:
        return [tuple(a) for a in args]
    if number in _MBPP_ARGS_OF_TUPLES:
        return [[tuple(item) for item in a] for a in args]
    if number in _MBPP_FIRST_OF_TUPLES:
        return [[tuple(item) for item in args[0]], *args[1:]]
    if number in _MBPP_SECOND_TUPLE:
        return [args[0], tuple(args[1]), *args[2:]]
    if number in _MBPP_FIRST_TUPLE:
        return [tuple(args[0]), *args[1:]]
    if number in _MBPP_TUPLE_OF_TUPLES:
        return [tuple(tuple(item) for item in a) for a in args]
    if number in _MBPP_ALL_TUPLES:
        return [_deep_tuple(a) for a in args]
    if number == 115:  # an empty item is a dict in the reference data
        return [[set(item) if isinstance(item, list) and item else {} for item in args[0]]]
    if number == 124:
        return [float(args[0]), complex(args[1])]
    if number == 252:
        return [complex(args[0])]
    if number == 278:
        return [tuple(tuple(item) if isinstance(item, list) else item for item in args[0])]
    if number == 722:
        return [{key: tuple(value) for key, value in args[0].items()}, *args[1:]]
    return args


def _require(tests: Mapping, key: str, kind: type | tuple[type, ...]):
    if key not in tests:
        raise ValueError(f"tests: missing key {key!r} (have {sorted(tests)})")
    if not isinstance(tests[key], kind):
        raise ValueError(f"tests[{key!r}] must be {kind}, got {type(tests[key]).__name__}")
    return tests[key]


def _inputs(tests: Mapping) -> list[list]:
    if "inputs" in tests:
        raw = _require(tests, "inputs", list)
    else:
        raw = list(tests.get("base_input") or []) + list(tests.get("plus_input") or [])
    if not raw:
        raise ValueError("tests: an MBPP+-style test needs 'inputs' (or 'base_input'/'plus_input')")
    task_id = str(tests.get("task_id", ""))
    converted = []
    for number, args in enumerate(raw, start=1):
        if not isinstance(args, list | tuple):
            raise ValueError(
                f"tests['inputs'][{number}] must be a list of arguments, got {type(args).__name__}"
            )
        converted.append(mbpp_arguments(task_id, list(args)) if task_id.startswith("Mbpp/") else list(args))
    return converted


def test_form(tests: Mapping) -> str:
    """'check' (HumanEval: `test` source with check(candidate)) or 'inputs' (MBPP+: inputs, outputs)."""
    if not isinstance(tests, Mapping):
        raise ValueError(f"tests must be a mapping (HumanEval or MBPP+ form), got {type(tests).__name__}")
    _require(tests, "entry_point", str)
    if "test" in tests:
        _require(tests, "test", str)
        return "check"
    if any(key in tests for key in ("inputs", "base_input", "plus_input")):
        return "inputs"
    raise ValueError("tests: need 'test' (HumanEval form) or 'inputs'/'base_input' (MBPP+ form)")


_expected_cache: dict[str, list | RuntimeError] = {}
_expected_locks: dict[str, threading.Lock] = {}
_expected_lock = threading.Lock()


def expected_outputs(tests: Mapping, *, timeout: float = 60.0) -> list[dict]:
    """The canonical solution's output for every input (run in the sandbox once, then cached in memory)."""
    if "expected" in tests:
        return [{"ok": sandbox_runner.encode(value)} for value in tests["expected"]]
    canonical = _require(tests, "canonical_solution", str)
    inputs = _inputs(tests)
    key = hashlib.sha256(
        json.dumps([canonical, tests["entry_point"], str(tests.get("task_id", ""))]).encode()
        + repr(inputs).encode()
    ).hexdigest()
    with _expected_lock:
        key_lock = _expected_locks.setdefault(key, threading.Lock())
    with key_lock:  # rollouts of one problem arrive together: compute once, the others wait
        if key not in _expected_cache:
            try:
                _expected_cache[key] = _reference_outputs(canonical, tests, inputs, timeout)
            except RuntimeError as exc:
                _expected_cache[key] = exc  # a failing reference fails every rollout: run it once
    if isinstance(_expected_cache[key], RuntimeError):
        raise _expected_cache[key]
    return _expected_cache[key]


def _reference_outputs(canonical: str, tests: Mapping, inputs: list[list], timeout: float) -> list[dict]:
    job = _job(canonical, tests, "inputs", timeout=timeout, total_timeout=max(600.0, timeout), memory_mb=4096)
    job["inputs"] = [sandbox_runner.encode(args) for args in inputs]
    result = _run_job(job)
    outputs = result.get("outputs")
    if result.get("judge_error") or result.get("load_error") or result.get("stopped") or outputs is None:
        problem = result.get("judge_error") or result.get("load_error") or result.get("stopped")
        raise RuntimeError(
            f"canonical solution of {tests.get('task_id', tests['entry_point'])} failed: {problem}"
        )
    return outputs


# ---------------------------------------------------------------- running the sandbox
def _job(code: str, tests: Mapping, mode: str, **limits) -> dict:
    job = {
        "mode": mode,
        "code": code,
        "entry_point": tests["entry_point"],
        "prelude": tests.get("prompt", "") if mode == "check" else "",
        "timeout": 10.0,
        "total_timeout": 30.0,
        "memory_mb": 1024,
        "file_mb": 16,
        "disk_mb": 64,
        "nproc": 64,
        "output_limit": 4096,
    }
    job.update(limits)
    return job


TEST_KEYS = ("test", "inputs", "expected", "atol", "test_timeouts", "mbpp")  # sent after the program's fork


def _job_part(part: dict) -> bytes:
    data = json.dumps(part).encode()
    return sandbox_runner.JOB_HEADER.pack(len(data)) + data


SITE_DIRS = ("site-packages", "dist-packages")


def sandbox_import_path(sys_path: Sequence[str], base_prefixes: Sequence[str]) -> list[str]:
    """The import path the sandbox gets, taken from the running interpreter's own `sys.path`.

        path = [p in sys_path : p lies under a base prefix]  (stdlib, its zip, lib-dynload)
             + [p in sys_path : p ends in site-packages or dist-packages, not already taken]

    base_prefixes: `sys.base_prefix` and `sys.base_exec_prefix`, where the interpreter itself lives. In a
    venv `sys.prefix` is the venv, which holds no standard library (so `sysconfig`'s `platstdlib` is the
    wrong place to look); a `--system-site-packages` venv, a conda prefix, a Debian `/usr` or a pyenv build
    all list their standard library under the base prefix and their packages in a site directory.
    The working directory ('') and PYTHONPATH entries outside those places are left out.
    """
    roots = [os.path.normpath(b) for b in base_prefixes if b]

    def under_base(path: str) -> bool:
        path = os.path.normpath(path)
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    stdlib = [p for p in sys_path if p and under_base(p) and os.path.basename(p) not in SITE_DIRS]
    site = [p for p in sys_path if p and os.path.basename(os.path.normpath(p)) in SITE_DIRS]
    ordered = stdlib + site
    return [p for i, p in enumerate(ordered) if p not in ordered[:i]]


@lru_cache(maxsize=1)
def _interpreter_paths() -> list[str]:
    """`sandbox_import_path` of this interpreter, existing directories only (the sandbox skips `site`)."""
    paths = sandbox_import_path(sys.path, [sys.base_prefix, sys.base_exec_prefix])
    return [p for p in paths if os.path.isdir(p)]


def _run_job(job: dict) -> dict:
    """Start the judge in fresh namespaces under a fresh temp dir; always clean both up."""
    available = isolation()
    prefix = available["prefix"]
    workdir = tempfile.mkdtemp(prefix="hsd-sandbox-")
    uid = _pick_uid(available["uids"]) if available["uids"] else None
    unique_uid = uid is not None and available["uids"][1] - available["uids"][0] > 1
    job = dict(job, workdir=workdir, uid=uid, unique_uid=unique_uid, namespaces=[a[2:] for a in prefix[1:]])
    job["private_mounts"] = "--mount" in prefix
    if uid is not None and not job["private_mounts"]:
        os.chown(workdir, uid, uid)
        job["preload"] = PRELOAD
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    job["sys_path"] = _interpreter_paths()
    command = [*prefix, sys.executable, "-S", "-s", "-P", str(RUNNER)]  # not -I: it drops PYTHONHASHSEED
    process = None
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            stdin = _job_part({k: v for k, v in job.items() if k not in TEST_KEYS})
            stdin += _job_part({k: v for k, v in job.items() if k in TEST_KEYS})
            stdout, stderr = process.communicate(stdin, timeout=job["total_timeout"] + 15)
        except subprocess.TimeoutExpired:
            return {"judge_error": f"the sandbox did not finish within {job['total_timeout'] + 15:g} s"}
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            tail = stderr.decode(errors="replace")[-2000:]
            return {"judge_error": f"sandbox exited with code {process.returncode} without a result: {tail}"}
    finally:
        finished = process is not None and process.poll() is not None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        if unique_uid and not (finished and process.returncode == 0):  # the judge did not clean up itself
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


def run_tests(
    code: str | bytes | None,
    tests: Mapping,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    total_timeout: float | None = None,
    file_mb: int = 16,
    disk_mb: int = 64,
    nproc: int = 64,
    output_limit: int = 4096,
    partial_credit: bool = False,
    audit_guard: bool = True,
) -> Verdict:
    """Run `code` against `tests` in the sandbox: reward 1.0 if every test passes (or the pass fraction).

    tests: HumanEval form {"test": source defining check(candidate), "entry_point", optional "prompt"} or
    MBPP+ form {"entry_point", "inputs" (or "base_input" + "plus_input"), "canonical_solution" or "expected",
    "atol", "task_id"}. timeout: seconds per test (and for loading the program); total_timeout: seconds for the
    whole run (default 3 x timeout, plus twice the reference solution's run time for MBPP+). For MBPP+ a test
    may also take up to 3x the reference solution's time on it. Reasons: "correct", "wrong", "timeout", "crash", "syntax_error",
    "no_code", "error" (the sandbox itself failed: reward unknown). extra: pass_fraction, all_pass, passed,
    tests, output (the program's first `output_limit` bytes of stdout/stderr), isolation.
    audit_guard: also refuse sockets, ctypes, starting programs, signalling outside the program and writing
    outside its directory with an in-process audit hook (a second line of defence; see docs/verifiers.md).
    """
    form = test_form(tests)
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout and memory_mb must be positive, got {timeout}, {memory_mb}")
    base_extra = {"pass_fraction": 0.0, "all_pass": False, "passed": 0, "tests": 0}
    if code is None or not as_text(code).strip():
        return Verdict(0.0, "no_code", "no code found in the completion", base_extra)
    limits = dict(timeout=timeout, memory_mb=memory_mb, file_mb=file_mb, disk_mb=disk_mb, nproc=nproc,
                  output_limit=output_limit, audit_guard=audit_guard)  # fmt: skip
    job = _job(as_text(code), tests, form, **limits)
    if form == "check":
        job["test"] = tests["test"]
        job["total_timeout"] = 3 * timeout if total_timeout is None else total_timeout
    else:
        try:
            expected = expected_outputs(tests)
        except RuntimeError as exc:
            return Verdict(0.0, UNCOMPUTED, str(exc), base_extra)
        job["expected"] = expected
        # a test may take 3x as long as the reference solution took on it (EvalPlus-style), never less than timeout
        job["test_timeouts"] = [max(timeout, 3 * out.get("time", 0.0)) for out in expected]
        reference_time = sum(out.get("time", 0.0) for out in expected)
        job["total_timeout"] = 3 * timeout + 2 * reference_time if total_timeout is None else total_timeout
        job["inputs"] = [sandbox_runner.encode(args) for args in _inputs(tests)]
        job["atol"] = float(tests.get("atol") or 0)
        job["mbpp"] = str(tests.get("task_id", "")).startswith("Mbpp/")
    return _verdict(_run_job(job), partial_credit)


def _verdict(result: dict, partial_credit: bool) -> Verdict:
    if result.get("judge_error"):
        return Verdict(0.0, UNCOMPUTED, f"sandbox failure: {result['judge_error']}", {"all_pass": False})
    tests, passed = result["tests"], result["passed"]
    extra = {
        "pass_fraction": passed / tests if tests else 0.0,
        "passed": passed,
        "tests": tests,
        "output": result.get("output", ""),
        "isolation": result.get("isolation", {}),
    }
    if result.get("load_error"):
        extra.update(pass_fraction=0.0, all_pass=False)
        reason = "syntax_error" if result.get("syntax") else (result.get("stopped") or "wrong")
        return Verdict(0.0, reason, f"The program failed to load: {result['load_error']}", extra)
    if tests == 0:
        return Verdict(0.0, UNCOMPUTED, "the tests contain no test that calls the candidate", extra)
    all_pass = passed == tests and not result.get("stopped")
    extra["all_pass"] = all_pass
    if all_pass:
        return Verdict(1.0, "correct", "", extra)
    failure = result.get("first_failure") or {}
    feedback = f"Test {failure.get('index', '?')} of {tests} failed: {failure.get('test', '')}"
    feedback += f"\n{failure.get('error', '')}".rstrip()
    if result.get("stopped"):
        feedback += f"\nStopped after this test ({result['stopped']}); later tests count as failed."
    reward = extra["pass_fraction"] if partial_credit else 0.0
    return Verdict(reward, result.get("stopped") or "wrong", feedback, extra)
