"""Hostile completions end with reward 0 and a reason within timeout + 1 s, leaving nothing behind."""

from __future__ import annotations

import glob
import os
import socket
import tempfile
from pathlib import Path

import pytest

from hsd.tasks import code as code_module
from hsd.tasks.code import run_tests
from hsd.tasks.math import verify_math, warm_workers
from hsd.tasks.rewards import make_reward_func

TIMEOUT = 2.0
TESTS = {"test": "def check(candidate):\n    assert candidate(2) == 3\n", "entry_point": "f"}
ESCAPE = Path(tempfile.gettempdir()) / "hsd-escape-probe"


def _children() -> set[int]:
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(Path(stat).parent.name))
    return found


def _sandbox_processes() -> list[int]:
    """Processes running as a throwaway sandbox uid."""
    low = (code_module.isolation()["uids"] or (1 << 62, 0))[0]
    found = []
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            uid_line = next(line for line in Path(status).read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) >= low and low > 65534:
            found.append(int(Path(status).parent.name))
    return found


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture
def clean_host(tmp_path):
    """Asserts after the test: no sandbox dir, sandbox process, child process or escaped file remains."""
    ESCAPE.unlink(missing_ok=True)
    dirs, children = set(glob.glob(f"{tempfile.gettempdir()}/hsd-sandbox-*")), _children()
    yield tmp_path
    assert set(glob.glob(f"{tempfile.gettempdir()}/hsd-sandbox-*")) <= dirs
    assert _sandbox_processes() == []
    assert _children() <= children
    assert not ESCAPE.exists() and not (tmp_path / "escaped").exists()


def _hostile_programs(port: int, outside: Path) -> dict[str, str]:
    ret = "    return x + 1\n"
    return {
        "infinite loop": "def f(x):\n    while True:\n        pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\ndef f(x):\n" + ret,
        "fork bomb in the call": "import os\ndef f(x):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        "10 GB allocation": "def f(x):\n    block = bytearray(10 * 1024**3)\n" + ret,
        "write to the temp dir": f"def f(x):\n    open({str(ESCAPE)!r}, 'w').write('x')\n" + ret,
        "write to a test directory": f"def f(x):\n    open({str(outside / 'escaped')!r}, 'w').write('x')\n"
        + ret,
        "write above its directory": "def f(x):\n    open('../../escaped', 'w').write('x')\n" + ret,
        "network socket": f"import socket\ndef f(x):\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        + ret,
        "kill its parent": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n" + ret,
        "kill every process": "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGKILL)\n" + ret,
    }


CASES = list(_hostile_programs(0, Path("/")))


def _assert_contained(program: str, listener, **options) -> None:
    verdict = run_tests(program, TESTS, timeout=TIMEOUT, **options)  # how soon: benchmarks/limits.py
    assert verdict.reward == 0.0, verdict
    assert verdict.reason in ("timeout", "crash", "wrong"), verdict
    assert verdict.feedback
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected


@pytest.mark.parametrize("case", CASES)
def test_hostile_program_gets_zero_and_leaves_nothing(case, listener, clean_host):
    program = _hostile_programs(listener.getsockname()[1], clean_host)[case]
    _assert_contained(program, listener)


@pytest.mark.parametrize("case", ["write to a test directory", "write above its directory", "network socket",
                                  "kill its parent", "10 GB allocation", "fork bomb"])  # fmt: skip
def test_without_the_audit_guard_the_os_limits_alone_contain_the_program(case, listener, clean_host):
    program = _hostile_programs(listener.getsockname()[1], clean_host)[case]
    _assert_contained(program, listener, audit_guard=False)


def test_escaped_grandchildren_are_killed(clean_host):
    program = "import os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(600)\n    return x + 1\n"
    assert run_tests(program, TESTS, timeout=TIMEOUT).reason == "correct"


@pytest.fixture
def no_namespaces(monkeypatch):
    monkeypatch.setenv("HSD_SANDBOX_NAMESPACES", "0")
    code_module.isolation.cache_clear()
    yield
    code_module.isolation.cache_clear()


@pytest.mark.parametrize("case", ["write to the temp dir", "network socket", "kill its parent", "fork bomb"])
def test_without_namespaces_the_program_is_still_contained(case, listener, clean_host, no_namespaces):
    assert code_module.isolation()["prefix"] == []
    program = _hostile_programs(listener.getsockname()[1], clean_host)[case]
    _assert_contained(program, listener)


def test_invalid_utf8_code_is_a_syntax_error(clean_host):
    verdict = run_tests(b"def f(x):\n    return x + 1 \xff\xfe\n", TESTS, timeout=TIMEOUT)
    assert (verdict.reward, verdict.reason) == (0.0, "syntax_error")


HOSTILE_MATH = {
    "1 MB completion": "lorem ipsum " * 87_382,
    "1 MB boxed answer": "\\boxed{" + "9" * 1_000_000 + "}",
    "10,000 nested braces": "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "10,000 nested boxes": "\\boxed{" * 10_000 + "1" + "}" * 10_000,
    "unbalanced boxed": "the answer is \\boxed{",
    "invalid UTF-8": b"\xff\xfe the answer is \xc3\x28 \\boxed{\x80}",
}


@pytest.mark.parametrize("case", list(HOSTILE_MATH))
def test_hostile_math_completion_gets_zero(case):
    warm_workers(1)
    verdict = verify_math(HOSTILE_MATH[case], "5", timeout=TIMEOUT, fallback="none")
    assert verdict.reward == 0.0
    assert verdict.reason in ("no_answer", "answer_too_long", "wrong", "timeout")


def test_hostile_batch_through_the_reward_function_is_all_zero_and_computed():
    reward_func = make_reward_func(num_workers=2, math_timeout=TIMEOUT, code_timeout=TIMEOUT)
    programs = _hostile_programs(9, Path("/nonexistent"))
    completions = list(HOSTILE_MATH.values()) + [f"```python\n{programs[c]}```" for c in CASES[:3]]
    kinds = ["math"] * len(HOSTILE_MATH) + ["code"] * 3
    metas = [None] * len(HOSTILE_MATH) + [{"tests": TESTS}] * 3
    rewards = reward_func(
        [""] * len(completions), completions, answer=["5"] * len(kinds), kind=kinds, meta=metas
    )
    reward_func.close()
    assert rewards == [0.0] * len(completions)
    assert "error" not in reward_func.counts
