"""Who said what: speaker diarization, offline, on the CPU, without torch.

Speaker embeddings come from Resemblyzer's GE2E voice encoder (Apache-2.0; its weights,
converted once by packaging/convert_ge2e.py, ship in ``cesard/data/ge2e.npz``, 2.6 MB):
a 40-band mel power spectrogram (25 ms windows, 10 ms steps) through a 3-layer LSTM of
256 units and a linear layer, L2-normalised. Here it runs in numpy: 1.2 s windows of
speech every ``STEP_S`` seconds are embedded in batches, clustered with
scikit-learn (agglomerative, cosine, average linkage: a threshold when the number of
speakers is not given, else that number), and the labels smoothed; each word (or
segment) gets the speaker of the windows around its middle.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

RATE = 16000
N_FFT, HOP, N_MELS = 400, 160, 40
WINDOW_FRAMES = 120  # 1.2 s (trained on 1.6 s: measured in bench/diarize.py)
STEP_S = 0.75
MAX_SPEAKERS = 8  # when the job gives no bound
MODEL = "ge2e (Resemblyzer 0.1.4 weights)"
# Cosine distance under which two clusters of windows are one speaker (average
# linkage), when the number of speakers is not given: measured on joined real speech
# (bench/diarize.py).
THRESHOLD = 0.35


class DiarizationError(Exception):
    """Diarization could not be done (says why); the transcript stands without it."""


def _mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40): Slaney's scale and norm."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        mels = f / (200.0 / 3)
        log = f >= 1000.0
        mels[log] = 15.0 + np.log(f[log] / 1000.0) / (np.log(6.4) / 27.0)
        return mels

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        freqs = m * (200.0 / 3)
        log = m >= 15.0
        freqs[log] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m[log] - 15.0))
        return freqs

    fft_freqs = np.linspace(0, RATE / 2, 1 + N_FFT // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(np.array([0.0]))[0],
                                  hz_to_mel(np.array([RATE / 2]))[0], N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((N_MELS, len(fft_freqs)))
    for i in range(N_MELS):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS]))[:, None]
    return weights.astype(np.float32)


def mel(samples: np.ndarray) -> np.ndarray:
    """(frames, 40) mel power spectrogram, as Resemblyzer computed it with librosa."""
    pad = np.pad(samples.astype(np.float32), N_FFT // 2, mode="reflect")
    n = 1 + (len(pad) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    spec = np.abs(np.fft.rfft(pad[idx] * window, axis=1)) ** 2
    return np.asarray(spec.astype(np.float32) @ _FILTERS.T, dtype=np.float32)


_FILTERS = _mel_filters()


class Encoder:
    """GE2E in numpy. ``embed(frames)``: (B, 160, 40) → (B, 256), L2-normalised."""

    def __init__(self) -> None:
        path = resources.files("cesard") / "data" / "ge2e.npz"
        with resources.as_file(path) as p, np.load(p) as z:
            w = {k: z[k].astype(np.float32) for k in z.files}
        self.layers = [self._gates_ifog(w, i) for i in range(3)]
        self.linear = (w["linear_weight"].T.copy(), w["linear_bias"])

    @staticmethod
    def _gates_ifog(w: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, ...]:
        """Layer ``i``'s weights, transposed, gates reordered from torch's (input,
        forget, cell, output) to (input, forget, output, cell): one sigmoid over the
        first three, one tanh over the last."""
        n = w[f"lstm_weight_hh_l{i}"].shape[1]
        order = np.r_[0:2 * n, 3 * n:4 * n, 2 * n:3 * n]
        return (w[f"lstm_weight_ih_l{i}"][order].T.copy(),
                w[f"lstm_weight_hh_l{i}"][order].T.copy(),
                (w[f"lstm_bias_ih_l{i}"] + w[f"lstm_bias_hh_l{i}"])[order])

    def embed(self, x: np.ndarray) -> np.ndarray:
        h = x
        hid = np.zeros((len(x), 0), np.float32)
        for w_ih, w_hh, b in self.layers:
            b_, t_, _ = h.shape
            n = w_hh.shape[0]
            pre = (h.reshape(b_ * t_, -1) @ w_ih + b).reshape(b_, t_, 4 * n)
            hid = np.zeros((b_, n), np.float32)
            cell = np.zeros((b_, n), np.float32)
            outs = np.empty((b_, t_, n), np.float32)
            g = np.empty((b_, 4 * n), np.float32)
            for t in range(t_):
                np.matmul(hid, w_hh, out=g)
                g += pre[:, t]
                sig = g[:, :3 * n]
                np.multiply(sig, 0.5, out=sig)  # sigmoid(x) = (tanh(x/2) + 1) / 2
                np.tanh(sig, out=sig)
                sig += 1.0
                sig *= 0.5
                np.tanh(g[:, 3 * n:], out=g[:, 3 * n:])
                cell *= g[:, n:2 * n]
                cell += g[:, :n] * g[:, 3 * n:]
                np.tanh(cell, out=hid)
                hid *= g[:, 2 * n:3 * n]
                outs[:, t] = hid
            h = outs
        raw = np.maximum(0.0, hid @ self.linear[0] + self.linear[1])
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norm, 1e-9))


_ENCODER: Encoder | None = None


def encoder() -> Encoder:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = Encoder()
    return _ENCODER


def voice_spans(samples: np.ndarray) -> list[tuple[float, float]]:
    """Where there is speech, by Silero VAD (faster-whisper's, offline): stretches split
    at pauses of 0.3 s or more, padded by 0.1 s."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(samples, VadOptions(min_silence_duration_ms=300,
                                                       speech_pad_ms=100))
    return [(c["start"] / RATE, c["end"] / RATE) for c in chunks]


def windows(samples: np.ndarray, spans: list[tuple[float, float]]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mel windows of 1.6 s centred every STEP_S s in the speech: (B, 160, 40), their
    centres, and the stretch of speech each is in."""
    level = float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0
    if 0 < level < 10 ** (-30 / 20):  # Resemblyzer's volume normalisation (up only)
        samples = samples * (10 ** (-30 / 20) / level)
    frames = mel(samples)
    half = WINDOW_FRAMES // 2
    centres: list[float] = []
    bounds: list[tuple[int, int]] = []
    stretch: list[int] = []
    for n, (a, b) in enumerate(spans):
        t = a + min(STEP_S, (b - a)) / 2
        while t <= b:
            centres.append(t)
            bounds.append((int(a * RATE / HOP), int(np.ceil(b * RATE / HOP))))
            stretch.append(n)
            t += STEP_S
    batch = np.zeros((len(centres), WINDOW_FRAMES, N_MELS), np.float32)
    for k, c in enumerate(centres):
        # 1.6 s around the centre, inside its stretch of speech: a window never hears the
        # speaker of the next stretch
        first, last = bounds[k][0], min(bounds[k][1], len(frames))
        mid = int(round(c * RATE / HOP))
        lo = max(first, min(mid - half, last - WINDOW_FRAMES))
        chunk = frames[lo:min(lo + WINDOW_FRAMES, last)]
        batch[k, :len(chunk)] = chunk
    return batch, np.asarray(centres), np.asarray(stretch, dtype=int)


def cluster(emb: np.ndarray, speakers: int | None, lo: int, hi: int) -> np.ndarray:
    """A speaker label per embedding (0, 1, … in order of first appearance)."""
    try:
        from sklearn.cluster import AgglomerativeClustering
    except ImportError:
        raise DiarizationError("scikit-learn is not installed: install cesard with the "
                               "diarize extra (pip install 'cesard[diarize]')") from None

    if len(emb) < 2:
        return np.zeros(len(emb), int)
    if speakers is not None:
        k = min(speakers, len(emb))
        labels = AgglomerativeClustering(n_clusters=k, metric="cosine",
                                         linkage="average").fit_predict(emb)
    else:
        labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                         distance_threshold=THRESHOLD).fit_predict(emb)
        k = len(set(labels))
        if k < lo or k > hi:
            k = max(lo, min(hi, k, len(emb)))
            labels = AgglomerativeClustering(n_clusters=k, metric="cosine",
                                             linkage="average").fit_predict(emb)
    labels = _absorb_small(emb, labels)
    order: dict[int, int] = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return np.array([order[int(lab)] for lab in labels])


def _absorb_small(emb: np.ndarray, labels: np.ndarray, share: float = 0.03) -> np.ndarray:
    """Clusters of under ``share`` of the windows (a cough, an overlap) join the nearest
    large cluster."""
    counts = {int(c): int((labels == c).sum()) for c in set(labels)}
    big = [c for c, n in counts.items() if n >= max(2, share * len(labels))]
    if not big or len(big) == len(counts):
        return labels
    cents = {c: emb[labels == c].mean(axis=0) for c in big}
    out = labels.copy()
    for i, lab in enumerate(labels):
        if int(lab) not in big:
            out[i] = max(big, key=lambda c: float(emb[i] @ cents[c]))
    return out


def smooth(labels: np.ndarray, stretch: np.ndarray, width: int = 5) -> np.ndarray:
    """A majority vote over ``width`` neighbouring windows of the same stretch of speech
    (a change of speaker inside a stretch shorter than that is noise of the windows; a
    pause may end a turn however short)."""
    half = width // 2
    out = labels.copy()
    for i in range(len(labels)):
        lo, hi = max(0, i - half), i + half + 1
        near = labels[lo:hi][stretch[lo:hi] == stretch[i]]
        out[i] = np.bincount(near).argmax()
    return out


def diarize(samples: np.ndarray, speakers: int | None = None, min_speakers: int = 1,
            max_speakers: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(window centres in seconds, a speaker per window) for ``samples`` at 16 kHz."""
    spans = voice_spans(samples)
    if not spans:
        return np.zeros(0), np.zeros(0, int)
    batch, centres, stretch = windows(samples, spans)
    emb = np.concatenate([encoder().embed(batch[i:i + 256])
                          for i in range(0, len(batch), 256)]) if len(batch) else batch
    labels = cluster(emb, speakers, min_speakers, max_speakers)
    return centres, smooth(labels, stretch)


def speaker_at(centres: np.ndarray, labels: np.ndarray, start: float, end: float) -> int:
    """The speaker of the span [start, end]: the most common label of the windows whose
    centre falls in it, else the nearest window's."""
    inside = labels[(centres >= start) & (centres <= end)]
    if len(inside):
        return int(np.bincount(inside).argmax())
    return int(labels[int(np.argmin(np.abs(centres - (start + end) / 2)))])
