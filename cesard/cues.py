"""Subtitle cues from a transcript's segments, as subtitle conventions want them: at most
two lines of at most 42 characters and at most 7 seconds on screen, whatever the segments
are (a decoder's segment may run 30 s and 500 characters of continuous speech).

A segment is cut into cues at word boundaries: at the word timestamps when the job has
them, else at times shared out by characters over the segment. A cue ends at the end of
a sentence, or, when it would grow past a limit, after the last comma or full stop in its
second half (else before the word that does not fit). A word longer than a line is cut
into pieces. The text of the cues, read in order, is the text of the segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LINE_CHARS = 42
LINES = 2
MAX_SECONDS = 7.0
SENTENCE_END = (".", "?", "!", "。", "？", "！")
BREAKS = (*SENTENCE_END, ",", ";", ":", "，", "、")
MIN_SENTENCE_CHARS = 16  # a shorter sentence shares its cue with the next one


@dataclass
class Token:
    text: str
    start: float
    end: float


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]
    speaker: str | None = None  # a diarized segment's speaker (cues never span two)


def shown(speaker: str) -> str:
    """A diarized speaker as people read it: ``SPEAKER_2`` → ``Speaker 2``."""
    return speaker.replace("SPEAKER_", "Speaker ") if speaker.startswith("SPEAKER_") \
        else speaker


def tokens(segment: dict[str, Any]) -> list[Token]:
    """The segment's words with times (its word timestamps, else shared by characters),
    words longer than a line cut into pieces."""
    start, end = float(segment["start"]), float(segment["end"])
    words = segment.get("words") or []
    out: list[Token] = []
    if words:
        for w in words:
            text = str(w.get("word") or w.get("text") or "").strip()
            if text:
                out.append(Token(text, float(w["start"]), float(w["end"])))
    else:
        text = str(segment.get("text") or "")
        parts = text.split()
        total = max(1, sum(len(p) for p in parts))
        at = 0
        for p in parts:
            t0 = start + (end - start) * at / total
            at += len(p)
            out.append(Token(p, t0, start + (end - start) * at / total))
    pieces: list[Token] = []
    for t in out:
        if len(t.text) <= LINE_CHARS:
            pieces.append(t)
            continue
        n = -(-len(t.text) // LINE_CHARS)
        for i in range(n):
            chunk = t.text[i * LINE_CHARS:(i + 1) * LINE_CHARS]
            pieces.append(Token(chunk, t.start + (t.end - t.start) * i / n,
                                t.start + (t.end - t.start) * (i + 1) / n))
    return pieces


def wrap(words: list[str]) -> list[str] | None:
    """The words on at most two lines of at most LINE_CHARS, balanced; None if they do
    not fit."""
    one = " ".join(words)
    if len(one) <= LINE_CHARS:
        return [one]
    best: list[str] | None = None
    for i in range(1, len(words)):
        a, b = " ".join(words[:i]), " ".join(words[i:])
        if len(a) <= LINE_CHARS and len(b) <= LINE_CHARS:
            if best is None or abs(len(a) - len(b)) < abs(len(best[0]) - len(best[1])):
                best = [a, b]
    return best


def _fits(group: list[Token]) -> bool:
    return (wrap([t.text for t in group]) is not None
            and (len(group) == 1 or group[-1].end - group[0].start <= MAX_SECONDS))


def _cue(group: list[Token]) -> Cue:
    lines = wrap([t.text for t in group]) or [" ".join(t.text for t in group)]
    return Cue(group[0].start, max(group[-1].end, group[0].start), lines)


def cues(segments: list[dict[str, Any]]) -> list[Cue]:
    out: list[Cue] = []
    for seg in segments:
        first = len(out)
        cur: list[Token] = []
        for tok in tokens(seg):
            while cur and not _fits(cur + [tok]):
                # Too long or too long on screen: end after the last break in its second
                # half, else here.
                cut = next((i for i in range(len(cur) - 1, len(cur) // 2 - 1, -1)
                            if cur[i].text.endswith(BREAKS)), len(cur) - 1)
                out.append(_cue(cur[:cut + 1]))
                cur = cur[cut + 1:]
            cur.append(tok)
            if tok.text.endswith(SENTENCE_END) and \
                    len(" ".join(t.text for t in cur)) >= MIN_SENTENCE_CHARS:
                out.append(_cue(cur))
                cur = []
        if cur:
            out.append(_cue(cur))
        for c in out[first:]:
            c.speaker = seg.get("speaker")
    for a, b in zip(out, out[1:], strict=False):  # never on screen together
        a.end = min(a.end, b.start) if b.start >= a.start else a.end
    return out
