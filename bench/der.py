"""Diarization error rate, as NIST md-eval and pyannote.metrics score it: on 10 ms frames,
with a no-score collar around every reference boundary and overlapping speech scored
(each frame counts as many reference speakers as talk in it), after the best one-to-one
mapping of hypothesis speakers to reference speakers (Hungarian, scipy).

    DER = (missed + false alarm + confusion) / reference speech

tests/test_der.py checks it on cases worked by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STEP = 0.01

Turn = tuple[float, float, str]  # start, end, speaker


def _grid(turns: Sequence[Turn], names: list[str], n: int) -> np.ndarray:
    g = np.zeros((len(names), n), bool)
    for a, b, who in turns:
        g[names.index(who), int(round(a / STEP)):int(round(b / STEP))] = True
    return g


def der(reference: Sequence[Turn], hypothesis: Sequence[Turn],
        collar: float = 0.25) -> dict[str, float]:
    """missed, false_alarm, confusion, total (seconds) and der (a fraction)."""
    from scipy.optimize import linear_sum_assignment

    end = max([b for _, b, _ in [*reference, *hypothesis]] + [0.0])
    n = int(round(end / STEP)) + 1
    rnames = sorted({w for _, _, w in reference})
    hnames = sorted({w for _, _, w in hypothesis})
    ref, hyp = _grid(reference, rnames, n), _grid(hypothesis, hnames, n)
    scored = np.ones(n, bool)
    c = int(round(collar / STEP))
    for a, b, _ in reference:
        for t in (a, b):
            k = int(round(t / STEP))
            scored[max(0, k - c):k + c] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    co = ref.astype(int) @ hyp.T.astype(int)  # frames where ref i and hyp j both talk
    rows, cols = linear_sum_assignment(-co) if co.size else ([], [])
    correct = int(co[rows, cols].sum()) if co.size else 0
    nref, nhyp = ref.sum(axis=0), hyp.sum(axis=0)
    missed = int(np.maximum(0, nref - nhyp).sum())
    false_alarm = int(np.maximum(0, nhyp - nref).sum())
    confusion = int(np.minimum(nref, nhyp).sum()) - correct
    total = int(nref.sum())
    return {"missed": missed * STEP, "false_alarm": false_alarm * STEP,
            "confusion": confusion * STEP, "total": total * STEP,
            "der": (missed + false_alarm + confusion) / total if total else 0.0}
