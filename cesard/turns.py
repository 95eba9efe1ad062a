"""Speakers on a transcript: each word gets the speaker of the diarization windows
around it, a segment that spans a change of speaker is split at the word where the
speaker changes, and the result lists the speakers with their talk time.
(:mod:`cesard.speakers` finds who spoke when; this puts it on the text.)"""

from __future__ import annotations

from typing import Any

import numpy as np

from cesard.cues import tokens
from cesard.speakers import speaker_at


def name(label: int) -> str:
    return f"SPEAKER_{label + 1}"


def apply(segments: list[dict[str, Any]], centres: np.ndarray,
          labels: np.ndarray) -> list[dict[str, Any]]:
    """The segments with ``speaker`` on each (and on each word), split at the word where
    the speaker changes. Without word timestamps a segment's words get times shared out
    by characters (:func:`cesard.cues.tokens`), for the split only: the text is the same
    and its pieces keep ``words`` null."""
    out: list[dict[str, Any]] = []
    for seg in segments:
        real = bool(seg.get("words"))
        words: list[dict[str, Any]] = seg["words"] if real else [
            {"start": t.start, "end": t.end, "word": " " + t.text} for t in tokens(seg)]
        if not words or not len(labels):
            sp = name(speaker_at(centres, labels, seg["start"], seg["end"])) if len(labels) \
                else None
            out.append(dict(seg, speaker=sp))
            continue
        runs: list[list[dict[str, Any]]] = []
        for w in words:
            w = dict(w, speaker=name(speaker_at(centres, labels, float(w["start"]),
                                                float(w["end"]))))
            if runs and runs[-1][-1]["speaker"] == w["speaker"]:
                runs[-1].append(w)
            else:
                runs.append([w])
        if len(runs) == 1 and not real:  # not split: its text exactly as it was
            out.append(dict(seg, speaker=runs[0][0]["speaker"]))
            continue
        out += [_piece(seg, run, real) for run in runs]
    return out


def _piece(seg: dict[str, Any], words: list[dict[str, Any]], real: bool) -> dict[str, Any]:
    return dict(seg, start=round(float(words[0]["start"]), 3),
                end=round(float(words[-1]["end"]), 3),
                text="".join(str(w["word"]) for w in words).strip(),
                words=words if real else None, speaker=words[0]["speaker"])


def talk_times(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{"id", "talk_s"}] in order of first appearance."""
    times: dict[str, float] = {}
    for s in segments:
        if s.get("speaker"):
            times[s["speaker"]] = times.get(s["speaker"], 0.0) + float(s["end"]) - float(
                s["start"])
    return [{"id": k, "talk_s": round(v, 3)} for k, v in times.items()]
