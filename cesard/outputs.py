"""Transcript outputs: plain text, SubRip (.srt) and WebVTT (.vtt)."""

from __future__ import annotations

import json
from typing import Any

from cesard.cues import cues, shown


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_txt(result: dict[str, Any]) -> str:
    """The text; diarized, one ``Speaker N: …`` paragraph a turn."""
    segments = result.get("segments") or []
    if any(s.get("speaker") for s in segments):
        turns: list[tuple[str, list[str]]] = []
        for s in segments:
            who = shown(str(s.get("speaker") or "?"))
            if turns and turns[-1][0] == who:
                turns[-1][1].append(str(s.get("text") or "").strip())
            else:
                turns.append((who, [str(s.get("text") or "").strip()]))
        return "\n\n".join(f"{who}: {' '.join(t for t in texts if t)}"
                            for who, texts in turns) + "\n"
    text = str(result.get("text") or "")
    return text + "\n" if text else ""


def to_srt(result: dict[str, Any]) -> str:
    """SubRip: one block per cue (:mod:`cesard.cues`: two lines of 42, 7 s at most)."""
    blocks = []
    for i, c in enumerate(cues(result.get("segments") or []), 1):
        lines = list(c.lines)
        if c.speaker:
            lines[0] = f"{shown(c.speaker)}: {lines[0]}"
        blocks.append(f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n"
                      + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def to_vtt(result: dict[str, Any]) -> str:
    """WebVTT: one cue per :mod:`cesard.cues` cue."""
    lines = ["WEBVTT", ""]
    for c in cues(result.get("segments") or []):
        text = [ln.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                for ln in c.lines]
        if c.speaker:  # a voice tag: players show or style the speaker
            who = shown(c.speaker).replace("&", "&amp;").replace("<", "&lt;").replace(">", "")
            text[0] = f"<v {who}>{text[0]}"
        lines += [f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}", *text, ""]
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
