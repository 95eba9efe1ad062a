"""Transcript outputs: plain text, SubRip (.srt) and WebVTT (.vtt)."""

from __future__ import annotations

import json
from typing import Any

from cesard.cues import cues


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_txt(result: dict[str, Any]) -> str:
    text = str(result.get("text") or "")
    return text + "\n" if text else ""


def to_srt(result: dict[str, Any]) -> str:
    """SubRip: one block per cue (:mod:`cesard.cues`: two lines of 42, 7 s at most)."""
    blocks = []
    for i, c in enumerate(cues(result.get("segments") or []), 1):
        blocks.append(f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n"
                      + "\n".join(c.lines) + "\n")
    return "\n".join(blocks)


def to_vtt(result: dict[str, Any]) -> str:
    """WebVTT: one cue per :mod:`cesard.cues` cue."""
    lines = ["WEBVTT", ""]
    for c in cues(result.get("segments") or []):
        lines += [f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}",
                  *(ln.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    for ln in c.lines), ""]
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False) + "\n"


RENDER = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def render_all(result: dict[str, Any], formats: list[str] | tuple[str, ...]) -> dict[str, bytes]:
    """File name → content for ``transcript.txt`` and each requested format."""
    out = {"transcript.txt": to_txt(result).encode("utf-8", "backslashreplace")}
    for fmt in formats:
        if fmt in ("srt", "vtt"):
            out[f"transcript.{fmt}"] = RENDER[fmt](result).encode("utf-8", "backslashreplace")
    return out
