"""The daemon's shape (docs/architecture.md): no import cycle among cesard's modules,
nothing but main imports the supervisor, no module over 600 lines, and no code that
reaches a private attribute of another object."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import import_graph  # noqa: E402

MAX_LINES = 600
# faster-whisper's own method, called on purpose: it splits a window's tokens exactly
# as sequential decoding does (cesard/batch.py).
ALLOWED_PRIVATE = {"model._split_segments_by_timestamps"}


def modules() -> list[Path]:
    return sorted((ROOT / "cesard").rglob("*.py"))


def test_no_import_cycle_and_only_main_imports_the_supervisor() -> None:
    assert import_graph.problems(import_graph.graph()) == []


def test_the_import_check_finds_a_cycle() -> None:
    g = {"cesard.a": {"cesard.b"}, "cesard.b": {"cesard.a"}, "cesard.c": {"cesard.supervisor"}}
    assert import_graph.problems(g) == [
        "import cycle: cesard.a -> cesard.b",
        "cesard.c imports cesard.supervisor (only cesard.main may)"]


def test_no_module_is_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_code_reaches_into_another_objects_private_attributes() -> None:
    reach = re.compile(r"\b(?!self\b|cls\b|os\b|sys\b)([a-z_][a-z0-9_]*)\.(_[a-z][a-z0-9_]*)")
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}" for p in modules()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             for m in reach.finditer(line.split("#")[0])
             if m.group(0) not in ALLOWED_PRIVATE]
    assert found == []
