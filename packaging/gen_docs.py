"""Generate man pages and shell completion from the code, so they cannot drift from it.

    python packaging/gen_docs.py OUTDIR

writes ``OUTDIR/man/cesard.8``, ``cesarctl.1`` (from the argument parsers, with
argparse-manpage), ``cesard.yaml.5`` (from ``packaging/cesard.yaml``, whose keys and
defaults a test keeps equal to the daemon's), and ``OUTDIR/completion/cesarctl.bash``,
``_cesarctl`` (zsh), ``cesard.bash``, ``_cesard`` (from the parsers, with shtab; job ids
and model names are completed from ``cesarctl list``/``cesarctl models`` at run time).
Both tools are maintained and read argparse itself: no second description of the options.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cesard import __version__, ctl, main  # noqa: E402

SEE_ALSO = {
    "cesard": ("cesarctl(1), cesard.yaml(5), systemctl(1), journalctl(1)",
               "The spool protocol and its guarantees: /usr/share/doc/cesard/ (docs/ in the "
               "source tree). The daemon runs as cesard.service; SIGTERM stops it cleanly, "
               "SIGHUP re-reads the configuration."),
    "cesarctl": ("cesard(8), cesard.yaml(5)",
                 "Exit status follows sysexits.h: 0 success, 64 usage, 65 the job failed, "
                 "66 no such file or job, 69 no spool, 75 try again later, 77 permission "
                 "denied, 78 configuration error; health: 0 OK, 1 WARNING, 2 CRITICAL, "
                 "3 UNKNOWN."),
}

# shtab: dynamic completions, as shell functions named in the preambles below.
BASH_PREAMBLE = r"""
_cesarctl_ids() { compgen -W "$(cesarctl list 2>/dev/null | cut -f1)" -- "$1"; }
_cesarctl_models() { compgen -W "$(cesarctl models 2>/dev/null | cut -f1)" -- "$1"; }
"""
ZSH_PREAMBLE = r"""
_cesarctl_ids() { compadd -- ${(f)"$(cesarctl list 2>/dev/null | cut -f1)"}; }
_cesarctl_models() { compadd -- ${(f)"$(cesarctl models 2>/dev/null | cut -f1)"}; }
"""
IDS = {"bash": "_cesarctl_ids", "zsh": "_cesarctl_ids"}
MODELS = {"bash": "_cesarctl_models", "zsh": "_cesarctl_models"}


def _mark_dynamic(parser: argparse.ArgumentParser) -> None:
    """Tell shtab which arguments complete job ids, model names, or files."""
    import shtab

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_dynamic(sub)
        elif action.dest in ("id", "ids"):
            action.complete = IDS  # type: ignore[attr-defined]
        elif action.dest == "model":
            action.complete = MODELS  # type: ignore[attr-defined]
        elif action.dest in ("files", "config", "pidfile", "log_file"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest == "spool":
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def manpage(parser: argparse.ArgumentParser, section: int, description: str) -> str:
    from argparse_manpage.manpage import Manpage

    name = parser.prog
    see_also, notes = SEE_ALSO[name]
    data: dict[str, Any] = {"project_name": "cesard", "version": __version__, "prog": name,
                            "description": description, "manual_section": section,
                            "manual_title": "cesard manual", "format": "pretty"}
    text = str(Manpage(parser, data))
    return text + f'.SH NOTES\n{notes}\n.SH "SEE ALSO"\n{see_also}\n'


@dataclass
class Group:
    """One paragraph of packaging/cesard.yaml: its prose, the keys it describes with their
    defaults, and the lines shown as they are (indented comment lines: the modes of a
    key, an example value, a command to run)."""

    lines: list[tuple[str, str]] = field(default_factory=list)  # ("text" | "pre", line)
    keys: list[tuple[str, str]] = field(default_factory=list)  # (key, default)

    def blocks(self) -> list[tuple[str, list[str]]]:
        """The comment as ("text", [line]) and ("pre", [lines shown as they are])."""
        out: list[tuple[str, list[str]]] = []
        for kind, text in self.lines:
            if kind == "pre" and out and out[-1][0] == "pre":
                out[-1][1].append(text)
            else:
                out.append((kind, [text]))
        return out


def config_groups() -> list[Group]:
    """The paragraphs of packaging/cesard.yaml that name keys, in order: every comment
    line of the file but its header is in one of them."""
    groups: list[Group] = []
    cur = Group()
    for line in (ROOT / "packaging" / "cesard.yaml").read_text().splitlines()[1:]:
        m = re.match(r"#([a-z_]+): ?(.*)$", line)
        if m:
            cur.keys.append((m.group(1), m.group(2)))
        elif line.startswith("#  ") or line.startswith("#\t"):
            cur.lines.append(("pre", line[1:]))
        elif line.startswith("#"):
            if cur.keys:  # prose after a key: the next paragraph (prose comes first)
                groups.append(cur)
                cur = Group()
            cur.lines.append(("text", line[1:].strip()))
        elif not line.strip():
            if cur.keys:
                groups.append(cur)
            cur = Group()  # (a paragraph that names no key is the file's header)
    if cur.keys:
        groups.append(cur)
    return groups


def config_entries() -> list[tuple[str, str, str]]:
    """(key, default, prose) for each key of packaging/cesard.yaml, in its order."""
    return [(k, d, " ".join(t for kind, t in g.lines if kind == "text"))
            for g in config_groups() for k, d in g.keys]


def config_markdown() -> str:
    """docs/configuration.md: the configuration reference, generated (a test keeps it so)."""
    out = ["# Configuration reference", "",
           "Generated by `packaging/gen_docs.py --docs` from `packaging/cesard.yaml`, whose "
           "keys and defaults a test keeps equal to the daemon's. YAML, read from `--config`, "
           "then `$CESAR_CONFIG`, then `/etc/cesar/cesard.yaml`; unknown keys and bad values "
           "are errors naming the key (exit 78).", ""]
    for g in config_groups():
        out += ["## " + ", ".join(f"`{k}`" for k, _ in g.keys), "", "```yaml"]
        out += [f"{k}: {d}" for k, d in g.keys] + ["```", ""]
        for kind, lines in g.blocks():
            out += ["```", *lines, "```"] if kind == "pre" else lines
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def config_manpage(date: str) -> str:
    """cesard.yaml(5) from packaging/cesard.yaml: each paragraph with its keys and defaults
    and every line of its comment."""
    out = [f'.TH CESARD.YAML 5 "{date}" "cesard {__version__}" "cesard manual"',
           ".SH NAME", "cesard.yaml \\- configuration of the cesard transcription daemon",
           ".SH SYNOPSIS", "/etc/cesar/cesard.yaml", ".SH DESCRIPTION",
           "YAML. Every key is optional; unknown keys and bad values are errors that name "
           "the key (exit status 78). Check with \\fBcesard \\-\\-check\\-config\\fR, apply "
           "with \\fBsystemctl reload cesard\\fR.", ".SH KEYS"]
    for g in config_groups():
        out += [".TP", ", ".join(f"\\fB{k}\\fR (default: {_roff(d) or 'none'})"
                                 for k, d in g.keys)]
        for kind, lines in g.blocks():
            roff = [_roff(x) for x in lines]
            out += [".RS", ".nf", *roff, ".fi", ".RE"] if kind == "pre" else roff
    out += [".SH FILES", "/etc/cesar/cesard.yaml", '.SH "SEE ALSO"', "cesard(8), cesarctl(1)"]
    return "\n".join(x for x in out if x is not None) + "\n"


def _roff(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + ln if ln.startswith((".", "'")) else ln)
                     for ln in text.splitlines())


def completions(parser: argparse.ArgumentParser) -> dict[str, str]:
    import shtab

    _mark_dynamic(parser)
    name = parser.prog
    return {f"{name}.bash": shtab.complete(parser, "bash", preamble=BASH_PREAMBLE),
            f"_{name}": shtab.complete(parser, "zsh", preamble=ZSH_PREAMBLE)}


def generate(out: Path) -> list[Path]:
    date = dt.date.today().isoformat()
    (out / "man").mkdir(parents=True, exist_ok=True)
    (out / "completion").mkdir(parents=True, exist_ok=True)
    written = []
    pages = {"cesard.8": manpage(main.parser(), 8, "transcription daemon fed through a spool"),
             "cesarctl.1": manpage(ctl.parser(), 1, "submit audio to cesard and read results"),
             "cesard.yaml.5": config_manpage(date)}
    for name, text in pages.items():
        (out / "man" / name).write_text(text)
        written.append(out / "man" / name)
    for parser in (ctl.parser(), main.parser()):
        for name, text in completions(parser).items():
            (out / "completion" / name).write_text(text)
            written.append(out / "completion" / name)
    return written


if __name__ == "__main__":
    if sys.argv[1:] == ["--docs"]:
        (ROOT / "docs" / "configuration.md").write_text(config_markdown())
        print(ROOT / "docs" / "configuration.md")
    else:
        for p in generate(Path(sys.argv[1] if len(sys.argv) > 1 else "build/generated")):
            print(p)
