"""Plots of the credit measurements and one self-contained report.html: tables, plots embedded as base64,
and per-token heat maps of failed rollouts next to their peers with the divergence tau marked.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from hsd.analysis.credit import CONTEXTS, DIFFICULTIES, FailedRollout
from hsd.core.tau import NO_TAU

PROFILE_PNG = "credit_profile.png"
SILENCE_PNG = "silence_curve.png"
COVERAGE_PNG = "coverage.png"
LABELS = {"opsd": "OPSD (answer)", "hsd": "HSD (peer + answer)", "reference": "SDFT (reference)"}
COLORS = {"opsd": "#d62728", "hsd": "#1f77b4", "reference": "#2ca02c"}
# the paper's cumulative share of |A| within |t - tau| <= w (method doc, "Credit profile at the divergence")
PAPER_MASS_WITHIN = {
    "HSD": {"2": 0.23, "4": 0.39, "8": 0.55, "16": 0.76, "32": 0.93},
    "GRPO+OPSD": {"2": 0.11, "4": 0.21, "8": 0.31, "16": 0.53, "32": 0.79},
    "OPSD": {"2": 0.07, "4": 0.13, "8": 0.19, "16": 0.36, "32": 0.64},
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(values):
    return [math.nan if v is None else v for v in values]


def _save(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str, legend_size: int = 7) -> Path:
    """Label the axes, add the legend (when any line has a label: none without analysed rollouts), write
    the figure to `path` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_credit_profile(tables: dict, path: Path) -> Path:
    """Mean |A| against t - tau, one line per context, dashed: the same aligned at a random position."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    profile = tables["credit_profile"]
    for context in tables["contexts"]:
        color = COLORS[context]
        ax.plot(profile["offsets"], _nan(profile[context]["mean_abs"]), color=color, label=LABELS[context])
        ax.plot(profile["offsets"], _nan(profile[context]["mean_abs_random"]), color=color, ls="--", lw=0.8,
                alpha=0.7, label=f"{LABELS[context]}, random position")  # fmt: skip
    ax.axvline(0, color="gray", lw=0.8)
    return _save(fig, ax, path, xlabel="t - tau (tokens)", ylabel="mean |A_t| (nats)",
                 title="Credit aligned at the first divergence from the peer")  # fmt: skip


def plot_silence_curve(tables: dict, path: Path) -> Path:
    """Mean |A| against relative position t / |o|, one line per context."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    curve = tables["silence_curve"]
    for context in tables["contexts"]:
        ax.plot(curve["bins"], _nan(curve[context]), marker="o", ms=3, color=COLORS[context],
                label=LABELS[context])  # fmt: skip
    return _save(fig, ax, path, xlabel="relative position t / |o|", ylabel="mean |A_t| (nats)",
                 title="Teacher silence: signal by position in the rollout", legend_size=8)  # fmt: skip


def plot_coverage(tables: dict, path: Path) -> Path:
    """Share of rollouts that fail with a successful peer against the pass rate, and f(p, G) (Eq. 12)."""
    from hsd.core.tau import coverage

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    table = tables["coverage"]
    G = table.get("group_size")
    if G and G >= 2:
        ps = [i / 200 for i in range(201)]
        ax.plot(ps, [coverage(p, G) for p in ps], color="black", label=f"f(p, G={G}) (Eq. 12)")
        points = table.get("problems", [])
        if points:
            ax.scatter([p for p, _ in points], [c for _, c in points], s=12, alpha=0.4, label="one problem")
        for bucket in DIFFICULTIES:
            row = table["buckets"][bucket]
            if row["n_problems"]:
                ax.scatter([row["mean_pass_rate"]], [row["empirical"]], s=60, marker="D",
                           label=f"{bucket} (n={row['n_problems']})")  # fmt: skip
    return _save(fig, ax, path, xlabel="pass rate p of the group", ylabel="failed rollouts with a peer / rollouts",
                 title="Coverage")  # fmt: skip


# ------------------------------------------------------------------------------------------ report.html
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.rollout { border-top: 2px solid #888; margin-top: 2em; padding-top: 0.5em; }
.nav a { margin-right: 1em; }
.prompt { white-space: pre-wrap; background: #f6f6f6; padding: 0.4em; font-size: 0.85em; }
.seq { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; line-height: 1.7;
       border: 1px solid #ddd; padding: 0.3em; margin: 0.2em 0 0.8em; }
.tok { border-radius: 2px; }
.tok.tau, .ptok.tau { outline: 2px solid #000; }
.tok.err { box-shadow: inset 0 -4px 0 #f0a000; }
.ptok.shared { background: #e8e8e8; }
.label { font-size: 0.8em; color: #555; }
.note { font-size: 0.85em; color: #555; }
"""


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _tau_text(tau: int) -> str:
    return "-" if tau == NO_TAU else _fmt(tau)


def percent(value) -> str:
    """A share in [0, 1] as a whole percentage; "-" for None."""
    return "-" if value is None else f"{100 * value:.0f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _mass_rows(tables: dict, key: str, control: str, widths: Sequence[str]) -> list[list[str]]:
    rows = []
    for context in tables["contexts"]:
        rows.append([LABELS[context], *(percent(tables[key][context].get(w)) for w in widths)])
        rows.append(
            [
                f"{LABELS[context]}, random position",
                *(percent(tables[control][context].get(w)) for w in widths),
            ]
        )
    return rows


def _tables_html(tables: dict) -> str:
    widths = list(next(iter(tables["mass_within"].values()), {}).keys()) or ["2", "4", "8", "16", "32"]
    header = ["share of |A| within |t - tau| <= w", *(f"w={w}" for w in widths)]
    paper = [
        [f"paper: {name}", *(percent(values.get(w)) for w in widths)]
        for name, values in PAPER_MASS_WITHIN.items()
    ]
    counts = tables["counts"]
    parts = [
        "<h2>Credit at the divergence</h2>",
        f"<p class='note'>{counts['analysed']} failed rollouts with a peer; median tau {_fmt(tables['median_tau'], 1)}; "
        f"tau = 0 (no shared prefix) for {percent(tables['tau_zero_share'])} of them.</p>",
        "<h3>All analysed failures</h3>",
        _table(header, _mass_rows(tables, "mass_within", "mass_within_random", widths) + paper),
        f"<h3>Failures with tau &gt; 0 ({tables['n_tau_pos']})</h3>",
        _table(header, _mass_rows(tables, "mass_within_tau_pos", "mass_within_random_tau_pos", widths)),
        _error_html(tables, widths),
        "<h3>Magnitude</h3>",
        _magnitude_table(tables),
        "<h3>By difficulty (group pass rate)</h3>",
        _difficulty_table(tables),
        "<h3>Shared prefix with the failed rollout (tokens)</h3>",
        _prefix_table(tables),
        "<h3>Coverage against f(p, G) (Eq. 12)</h3>",
        _coverage_table(tables),
        "<h3>Counts</h3>",
        _table(["count", "value"], [[html.escape(k), _fmt(v)] for k, v in counts.items()]),
    ]
    return "\n".join(parts)


def _magnitude_table(tables: dict) -> str:
    """Mean |A| at tau and elsewhere, their ratio, and the credit profile's peak, per context."""
    rows = [
        [
            LABELS[c],
            _fmt(tables["abs_credit_at_tau"][c]),
            _fmt(tables["abs_credit_elsewhere"][c]),
            _fmt(_ratio(tables["abs_credit_at_tau"][c], tables["abs_credit_elsewhere"][c]), 2),
            _fmt(tables["peak_credit_at_tau"][c]["peak"]),
            _fmt(tables["peak_credit_at_tau"][c]["peak_offset"]),
        ]
        for c in tables["contexts"]
    ]
    header = ["context", "mean |A| at tau", "mean |A| elsewhere", "ratio", "profile peak", "peak at t - tau"]
    return _table(header, rows)


def _difficulty_table(tables: dict) -> str:
    """Per difficulty bucket: rollouts, median tau, mean |A| at tau per context."""
    contexts = tables["contexts"]
    rows = [[b, _fmt(row["n_rollouts"]), _fmt(row["median_tau"], 1),
             *(_fmt(row["abs_credit_at_tau"].get(c)) for c in contexts)]
            for b, row in tables["by_difficulty"].items()]  # fmt: skip
    return _table(["bucket", "rollouts", "median tau", *(f"|A| at tau, {c}" for c in contexts)], rows)


def _prefix_table(tables: dict) -> str:
    """How many tokens the failed rollout shares with its peer and with the reference solution."""
    rows = [
        [name, _fmt(s["n"]), _fmt(s["median"], 1), _fmt(s["mean"], 1), percent(s["zero_share"])]
        for name, s in (
            ("successful peer", tables["shared_prefix"]["peer"]),
            ("reference solution", tables["shared_prefix"]["reference"]),
        )
    ]
    return _table(["with", "n", "median", "mean", "none shared"], rows)


def _coverage_table(tables: dict) -> str:
    """Empirical coverage against f(p, G) (Eq. 12) by difficulty bucket."""
    rows = [
        [b, _fmt(r["n_problems"]), _fmt(r["mean_pass_rate"]), _fmt(r["empirical"]), _fmt(r["formula"])]
        for b, r in tables["coverage"]["buckets"].items()
    ]
    return _table(["bucket", "problems", "mean p", "empirical", "f(p, G)"], rows)


def _error_html(tables: dict, widths: Sequence[str]) -> str:
    """The table aligned at the verifier's first wrong token, when the task exposes it."""
    errors = tables.get("error_position")
    if not errors:
        return ""
    rows = []
    for c in tables["contexts"]:
        rows.append([LABELS[c], *(percent(errors["mass_within"][c].get(w)) for w in widths),
                     _fmt(errors["abs_credit_at_error"][c]), _fmt(errors["abs_credit_elsewhere"][c])])  # fmt: skip
        rows.append([f"{LABELS[c]}, random position", *(percent(errors["mass_within_random"][c].get(w)) for w in widths),
                     "", ""])  # fmt: skip
    header = ["share of |A| within |t - error| <= w", *(f"w={w}" for w in widths), "mean |A| at error",
              "mean |A| elsewhere"]  # fmt: skip
    return (
        f"<h3>Aligned at the true error ({errors['n']} rollouts whose first wrong token is known)</h3>"
        f"<p class='note'>tau is the true error for {percent(errors['tau_equals_error_share'])} of them and comes "
        f"before it for {percent(errors['tau_before_error_share'])}; median error position "
        f"{_fmt(errors['median_error'], 1)}.</p>" + _table(header, rows)
    )


def _ratio(a, b):
    return a / b if a is not None and b else None


def _color(value: float, scale: float) -> str:
    """Red for A < 0 (the teacher finds the token less likely than the student), blue for A > 0."""
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = "214,39,40" if value < 0 else "31,119,180"
    return f"rgba({rgb},{alpha:.2f})"


def _token_text(text: str) -> str:
    if text == "":
        return "&#8709;"
    return html.escape(text.replace("\n", "\u21b5\n"))


def _heat_row(r: FailedRollout, index: int, context: str, scale: float) -> str:
    credit = r.credit(context)
    tau = r.tau
    cells = []
    for t, (token, a) in enumerate(zip(r.completion_tokens, credit)):
        cls = "tok" + (" tau" if t == tau else "") + (" err" if t == r.error_position else "")
        cells.append(
            f'<span class="{cls}" data-t="{t}" title="t={t} A={a:+.3f}" style="background:{_color(a, scale)}">'
            f"{_token_text(token)}</span>"
        )
    return (
        f'<div class="label">{LABELS[context]}: mean |A| {sum(map(abs, credit)) / max(1, len(credit)):.3f}</div>'
        f'<div class="seq heat" data-rollout="{index}" data-context="{context}" '
        f'data-n-tokens="{len(r.completion_ids)}">{"".join(cells)}</div>'
    )


def _peer_row(r: FailedRollout) -> str:
    tau = r.tau if r.tau != NO_TAU else len(r.peer_ids)
    cells = []
    for t, token in enumerate(r.peer_tokens):
        cls = "ptok shared" if t < tau else ("ptok tau" if t == tau else "ptok")
        cells.append(f'<span class="{cls}">{_token_text(token)}</span>')
    return f'<div class="seq peer">{"".join(cells)}</div>'


def _rollouts_html(rollouts: Sequence[FailedRollout], contexts: Sequence[str]) -> str:
    if not rollouts:
        return "<p>No failed rollout with a successful peer was found.</p>"
    values = sorted(abs(a) for r in rollouts for c in contexts if c in r.teacher_logps for a in r.credit(c))
    # colour saturates at the 95th percentile
    scale = values[int(0.95 * (len(values) - 1))] if values else 1.0
    index_rows, sections = [], []
    for k, r in enumerate(rollouts):
        at_tau = []
        for c in contexts:
            credit = r.credit(c) if c in r.teacher_logps else None
            at_tau.append(_fmt(credit[r.tau]) if credit and 0 <= r.tau < len(credit) else "-")
        index_rows.append([f'<a href="#r{k}">{k}</a>', html.escape(r.problem_id), _tau_text(r.tau),
                           _fmt(len(r.completion_ids)), html.escape(r.reason), *at_tau])  # fmt: skip
        nav = [f'<a href="#r{k - 1}">&larr; previous</a>' if k else "", '<a href="#index">index</a>']
        if k + 1 < len(rollouts):
            nav.append(f'<a href="#r{k + 1}">next &rarr;</a>')
        heat = "".join(_heat_row(r, k, c, scale) for c in contexts if c in r.teacher_logps)
        error = "" if r.error_position is None else f", first wrong token {r.error_position}"
        sections.append(
            f'<div class="rollout" id="r{k}"><div class="nav">{"".join(nav)}</div>'
            f"<h3>Rollout {k}: problem {html.escape(r.problem_id)}, rollout {r.rollout} (peer {r.peer}), "
            f"tau = {_tau_text(r.tau)}{error}, verdict {html.escape(r.reason)}, "
            f"group pass rate {r.pass_rate:.2f}</h3>"
            f'<div class="prompt">{html.escape(r.prompt)}</div>'
            f'<div class="label">gold answer: {html.escape(r.answer)}</div>'
            '<div class="label">successful peer (shared prefix grey, its token at tau outlined)</div>'
            f"{_peer_row(r)}"
            f"{heat}</div>"
        )
    header = ["#", "problem", "tau", "error", "tokens", "verdict", *(f"A at tau, {c}" for c in contexts)]
    legend = (
        f"<p class='note'>Each failed rollout is shown once per context, one cell per completion token, "
        f"red where the teacher finds the token less likely than the student (A &lt; 0), blue where more; "
        f"colour saturates at |A| = {scale:.2f}. The token at tau is outlined; the first wrong token, when the "
        f"verifier knows it, is underlined in orange. Hover a token for its A.</p>"
    )
    return f'<h2 id="index">Failed rollouts</h2>{legend}{_table(header, index_rows)}{"".join(sections)}'


def _embedded_png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def order_for_display(rollouts: Sequence[FailedRollout], limit: int) -> list[FailedRollout]:
    """Up to `limit` rollouts, those with tau > 0 first (where a divergence inside the reply can be seen)."""
    inside = [r for r in rollouts if r.tau > 0]
    rest = [r for r in rollouts if not r.tau > 0]
    return (inside + rest)[: max(0, limit)]


def write_report(
    tables: dict,
    rollouts: Sequence[FailedRollout],
    out_dir: str | Path,
    *,
    title: str = "Where the credit lands",
    settings: dict | None = None,
    max_rollouts: int = 60,
) -> Path:
    """Write the three PNG plots and report.html (self-contained) to `out_dir`; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        (plot_credit_profile(tables, out / PROFILE_PNG), "credit profile aligned at tau"),
        (plot_silence_curve(tables, out / SILENCE_PNG), "silence curve"),
        (plot_coverage(tables, out / COVERAGE_PNG), "coverage"),
    ]
    shown = order_for_display(rollouts, max_rollouts)
    contexts = [c for c in CONTEXTS if c in tables["contexts"]]
    settings_html = html.escape(json.dumps(settings or {}, indent=1))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='note'>A_t = log pT(o_t) - log pS(o_t) (Eq. 2) on each failed rollout's own tokens; tau is "
        f"its first divergence from the successful peer (Eq. 11). {len(shown)} of {len(rollouts)} analysed "
        f"rollouts are shown below.</p>"
        f"<details><summary>settings</summary><pre>{settings_html}</pre></details>"
        f"{_tables_html(tables)}"
        "<h2>Plots</h2>"
        + "".join(_embedded_png(path, alt) for path, alt in plots)
        + _rollouts_html(shown, contexts)
        + "</body></html>\n"  # fmt: skip
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
