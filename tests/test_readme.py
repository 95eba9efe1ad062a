"""The README's two commands are the ones CI and users run; lint stays clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_ci_runs_the_readme_test_command() -> None:
    demo, tests = readme_commands()
    assert "cesarctl" in demo and "submit --wait" in demo
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_ruff_and_mypy_strict_are_clean() -> None:
    bin_dir = Path(sys.executable).parent
    r = subprocess.run([str(bin_dir / "ruff"), "check", "cesard", "tests"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(bin_dir / "mypy"), "--strict", "cesard"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_result_schema_rejects_what_it_should() -> None:
    """docs/result.schema.json, which every test's result goes through, can fail."""
    import jsonschema
    import pytest
    from helpers import checked

    from cesard import job as jobmod
    meta = jobmod.JobMeta(id="x1", options={}, submitted_at=jobmod.iso(1.7e9), owner=0)
    good = jobmod.make_result(meta, "failed", None, {"name": "a.wav", "type": "FIFO",
                              "bytes": None, "sha256": None}, None, jobmod.iso(1.7e9 + 1),
                              "h:1", 0, error=jobmod.UnsupportedFile("a.wav is a FIFO"))
    checked(good)
    for bad in ({**good, "source": None}, {**good, "error": None},
                {**good, "owner": {"uid": "alice"}}, {**good, "surprise": 1}):
        with pytest.raises(jsonschema.ValidationError):
            checked(bad)


def test_one_table_of_exit_codes_in_the_readme_help_and_man_page(tmp_path: Path) -> None:
    """cesarctl's exit codes are written once (cesard.ctl.common.EXIT_CODES) and shown
    as they are by --help, the man page and the README."""
    import subprocess
    import sys

    from cesard.ctl.common import EXIT_CODES

    assert EXIT_CODES in (ROOT / "README.md").read_text()
    out = subprocess.run([sys.executable, "-m", "cesard.ctl", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert EXIT_CODES in out
    sys.path.insert(0, str(ROOT / "packaging"))
    import gen_docs

    page = gen_docs.manpage(gen_docs.ctl.parser(), 1, "cesarctl")
    for line in EXIT_CODES.splitlines():
        assert line.split()[-1] in page, line
