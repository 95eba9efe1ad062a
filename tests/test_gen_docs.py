"""Man pages and completion are generated from the parsers and the config reference
(packaging/gen_docs.py), so they list exactly what the code accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    r = subprocess.run([sys.executable, str(REPO / "packaging" / "gen_docs.py"), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_man_pages_name_every_command_option_and_key(generated: Path) -> None:
    from cesard import config, ctl
    page = (generated / "man" / "cesarctl.1").read_text()
    sub = next(a for a in ctl.parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"cesarctl {name}" in page, name
    assert "beam\\-size" in page or "beam-size" in page
    conf = (generated / "man" / "cesard.yaml.5").read_text()
    for key in config.KEYS:
        assert f"\\fB{key}\\fR" in conf, key
    daemon = (generated / "man" / "cesard.8").read_text()
    assert "detach" in daemon and ("check\\-config" in daemon or "check-config" in daemon)
    if shutil.which("man"):
        for name in ("cesard.8", "cesarctl.1", "cesard.yaml.5"):
            r = subprocess.run(["man", "--warnings", "-l", str(generated / "man" / name)],
                               capture_output=True, text=True, env={"MANWIDTH": "80",
                                                                     "PATH": "/usr/bin:/bin"})
            assert r.returncode == 0 and r.stderr == "", (name, r.stderr)


def complete(script: Path, *words: str) -> list[str]:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    cmd = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
           f"COMP_CWORD={len(words) - 1}; COMP_LINE='{' '.join(words)}'; "
           "_shtab_cesarctl; printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bash_completes_subcommands_options_and_values(generated: Path) -> None:
    script = generated / "completion" / "cesarctl.bash"
    assert "submit" in complete(script, "cesarctl", "su")
    assert "--priority" in complete(script, "cesarctl", "submit", "--pr")
    assert set(complete(script, "cesarctl", "submit", "--priority", "")) == {
        "high", "normal", "low"}
    assert "_cesarctl_ids" in script.read_text()  # job ids come from `cesarctl list`
    assert "_cesarctl_models" in script.read_text()
    zsh = (generated / "completion" / "_cesarctl").read_text()
    assert zsh.startswith("#compdef cesarctl") and "submit" in zsh


def test_the_configuration_reference_in_docs_is_generated_and_current() -> None:
    sys.path.insert(0, str(REPO / "packaging"))
    import gen_docs

    from cesard import config
    assert (REPO / "docs" / "configuration.md").read_text() == gen_docs.config_markdown(), \
        "docs/configuration.md is stale: run python packaging/gen_docs.py --docs"
    keys = [k for k, _, _ in gen_docs.config_entries()]
    assert sorted(keys) == sorted(config.KEYS)


def test_every_comment_line_of_the_reference_config_is_in_the_generated_pages() -> None:
    """docs/configuration.md and cesard.yaml(5) carry every line of packaging/cesard.yaml's
    comments (indented ones too: privacy's modes, the setfacl command, the hook
    examples), each paragraph under the keys it describes."""
    sys.path.insert(0, str(REPO / "packaging"))
    import gen_docs

    text = (REPO / "packaging" / "cesard.yaml").read_text()
    body = text.split("\n\n", 1)[1]  # after the file's header
    lines = [ln[1:] for ln in body.splitlines()
             if ln.startswith("#") and not re.match(r"#[a-z_]+:", ln)]
    assert len(lines) > 90
    page = gen_docs.config_markdown()
    man = gen_docs.config_manpage("2026-01-01").replace("\\-", "-").replace("\\&", "")
    for ln in lines:
        assert (ln.rstrip() if ln.startswith("  ") else ln.strip()) in page, ln
        assert ln.strip() in man, ln
    groups = {k: g for g in gen_docs.config_groups() for k, _ in g.keys}
    assert any("setfacl" in t for _, t in groups["metrics_textfile"].lines)
    assert any("group  every member" in t for _, t in groups["privacy"].lines)
    assert not any("Threads per worker" in t for _, t in groups["max_loaded_models"].lines)
