"""A clone of the repository with nothing beside it is the whole product: no shipped file points outside
the clone for data (the benchmark files come from `--data-dir`, `$HSD_DATA_DIR` or the hub)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["hsd", "configs", "docs", "scripts", "benchmarks", "README.md", "pyproject.toml"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".json"}


def test_no_shipped_file_reaches_outside_the_clone_for_data():
    files = []
    for name in SHIPPED:
        path = REPO / name
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in SUFFIXES]
    assert len(files) > 50
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if "../shared" in line
    ]
    assert not hits, hits
