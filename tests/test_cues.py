"""Subtitles follow subtitle conventions whatever the segments are: at most two lines of
42 characters and 7 s a cue, nothing lost, in order (Hypothesis draws the segments)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cesard import outputs
from cesard.cues import LINE_CHARS, MAX_SECONDS, cues

WORD = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Z")),
               min_size=1, max_size=60)


@st.composite
def segments(draw: Any) -> list[dict[str, Any]]:
    out = []
    t = draw(st.floats(0, 100))
    for _ in range(draw(st.integers(0, 5))):
        words = draw(st.lists(st.one_of(WORD, WORD.map(lambda w: w + "."),
                                        WORD.map(lambda w: w + ",")), min_size=1, max_size=120))
        length = draw(st.floats(0.2, 40))
        seg: dict[str, Any] = {"start": t, "end": t + length, "text": " " + " ".join(words)}
        if draw(st.booleans()):  # word timestamps
            step = length / len(words)
            seg["words"] = [{"start": t + i * step, "end": t + (i + 1) * step, "word": " " + w}
                            for i, w in enumerate(words)]
        out.append(seg)
        t += length + draw(st.floats(0, 3))
    return out


@settings(max_examples=300, deadline=None)
@given(segs=segments())
def test_cues_keep_to_two_lines_of_42_and_7_seconds_and_lose_nothing(
        segs: list[dict[str, Any]]) -> None:
    got = cues(segs)
    for c in got:
        assert 1 <= len(c.lines) <= 2 and all(0 < len(ln) <= LINE_CHARS for ln in c.lines), c
        words_in_cue = " ".join(c.lines).split()
        assert c.end - c.start <= MAX_SECONDS + 1e-6 or len(words_in_cue) == 1, c
        assert c.start <= c.end
    for a, b in zip(got, got[1:], strict=False):
        assert a.end <= b.start + 1e-9 and a.start <= b.start
    said = "".join("".join(s["text"].split()) for s in segs)
    shown = "".join("".join(ln.split()) for c in got for ln in c.lines)
    assert shown == said


def test_thirty_seconds_of_continuous_speech_become_short_cues_split_at_punctuation() -> None:
    text = (" So the first thing we looked at was the budget for next year, which is tight,"
            " and the second was hiring. We agreed to wait until March before we decide"
            " anything about the new office, because the lease runs until June anyway and"
            " nobody wants to move twice in one year. Then we talked about the launch.")
    srt = outputs.to_srt({"segments": [{"start": 0.0, "end": 30.0, "text": text}]})
    blocks = srt.strip().split("\n\n")
    assert len(blocks) >= 5
    for b in blocks:
        n, times, *lines = b.split("\n")
        a, z = (sum(float(x) * m for x, m in zip(re.split("[:,]", t)[:3], (3600, 60, 1),
                                                      strict=True))
                + int(t[-3:]) / 1000 for t in times.split(" --> "))
        assert z - a <= MAX_SECONDS and 1 <= len(lines) <= 2
        assert all(len(ln) <= LINE_CHARS for ln in lines)
    firsts = [b.split("\n")[-1] for b in blocks]
    assert any(f.endswith(("year,", "tight,", "hiring.")) for f in firsts), srt
    vtt = outputs.to_vtt({"segments": [{"start": 0.0, "end": 3.0, "text": " Fish & <chips>"}]})
    assert "Fish &amp; &lt;chips&gt;" in vtt
