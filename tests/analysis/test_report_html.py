"""report.html opens in headless Chromium and shows one heat-map cell per completion token of each rollout,
with tau marked once per row and the plots embedded (no external resource)."""

from __future__ import annotations

import random
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from hsd.analysis.credit import FailedRollout, GroupOutcome, credit_tables
from hsd.analysis.report import order_for_display, write_report

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)  # fmt: skip
TRICKY_TOKENS = ["<b>", "&amp;", "\n", "", " ", "'\"", "x"]


def _rollouts(n: int, seed: int = 0) -> list[FailedRollout]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        length = rng.randint(1, 40)
        ids = [rng.randrange(50) for _ in range(length)]
        tau = rng.randint(0, length - 1)
        peer = ids[:tau] + [99] + [rng.randrange(50) for _ in range(rng.randint(0, 20))]
        student = [-rng.random() for _ in ids]
        teacher = {c: [s - rng.gauss(0, 1) for s in student] for c in ("opsd", "hsd", "reference")}
        out.append(
            FailedRollout(
                problem_id=f"p{k // 3}", rollout=k % 3, peer=3, pass_rate=rng.random(),
                completion_ids=ids, peer_ids=peer, student_logps=student, teacher_logps=teacher,
                reason="wrong", completion_tokens=[rng.choice(TRICKY_TOKENS) for _ in ids],
                peer_tokens=[rng.choice(TRICKY_TOKENS) for _ in peer], prompt="What is <1 & 2>?", answer="3",
                error_position=rng.choice([None, rng.randint(tau, length - 1)]), tau=tau,
            )
        )  # fmt: skip
    return out


class _DomCounter(HTMLParser):
    """Counts, per heat-map row, its `tok` cells and those marked `tau`; collects img sources."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.images: list[str] = []
        self._depth = 0  # nesting depth inside the current heat-map div

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "div" and "heat" in classes:
            self.rows.append({**attrs, "tok": 0, "tau": 0, "err": 0})
            self._depth = 1
        elif self._depth:
            if tag == "div":
                self._depth += 1
            if tag == "span" and "tok" in classes:
                self.rows[-1]["tok"] += 1
                self.rows[-1]["tau"] += "tau" in classes
                self.rows[-1]["err"] += "err" in classes

    def handle_endtag(self, tag):
        if self._depth and tag == "div":
            self._depth -= 1


def _dump_dom(path, profile_dir) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (scripts/setup.sh --dev installs it)"
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rollouts = _rollouts(14)
    tables = credit_tables(rollouts, [GroupOutcome(f"p{k}", 8, 3) for k in range(5)])
    path = write_report(tables, rollouts, out, settings={"model": "constructed"}, max_rollouts=10)
    dom = _DomCounter()
    dom.feed(_dump_dom(path, tmp_path_factory.mktemp("chromium-profile")))
    return rollouts, path, dom


def test_one_heat_map_cell_per_completion_token(report):
    rollouts, _, dom = report
    shown = order_for_display(rollouts, 10)
    assert len(dom.rows) == 3 * len(shown)  # one row per context
    for row in dom.rows:
        rollout = shown[int(row["data-rollout"])]
        assert row["tok"] == len(rollout.completion_ids) == int(row["data-n-tokens"])


def test_tau_and_the_true_error_are_marked_once_per_row(report):
    rollouts, _, dom = report
    shown = order_for_display(rollouts, 10)
    assert any(r.error_position is not None for r in shown) and any(r.error_position is None for r in shown)
    for row in dom.rows:
        rollout = shown[int(row["data-rollout"])]
        assert row["tau"] == (1 if rollout.tau < row["tok"] else 0)
        assert row["err"] == (0 if rollout.error_position is None else 1)


def test_report_is_self_contained(report):
    _, path, dom = report
    assert len(dom.images) == 3 and all(src.startswith("data:image/png;base64,") for src in dom.images)
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    for name in ("credit_profile.png", "silence_curve.png", "coverage.png"):
        assert (path.parent / name).stat().st_size > 1000


def test_rollouts_with_a_shared_prefix_are_shown_first():
    rollouts = _rollouts(30, seed=1)
    shown = order_for_display(rollouts, 12)
    inside = [r for r in rollouts if r.tau > 0]
    assert shown[: min(12, len(inside))] == inside[:12]
