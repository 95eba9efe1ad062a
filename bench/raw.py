"""Raw faster-whisper baselines for bench/run.py (run as a subprocess).

``serve``: import, load the model, print {"op": "ready", import_s, load_s}, wait
for a line on stdin (so several processes start transcribing together), then
transcribe the files in order and print {"op": "done", start, end, texts}.
``once FILE``: the whole life of a one-shot process (import, load, transcribe).

Decoding matches cesard's WhisperEngine: decode_audio at 16 kHz, then
model.transcribe(samples, beam_size, vad_filter, temperature 0, no conditioning on
the previous text) and the segments' text stripped and joined with spaces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    t_start = time.time()
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "once"])
    p.add_argument("files", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--no-vad", action="store_true")
    p.add_argument("--batched", type=int, default=0, help="BatchedInferencePipeline batch size")
    p.add_argument("--fw-defaults", action="store_true",
                   help="WhisperModel(path) and transcribe(vad_filter=True), nothing else set")
    a = p.parse_args()
    import faster_whisper
    from faster_whisper.audio import decode_audio
    t_import = time.time()
    if a.fw_defaults:
        model = faster_whisper.WhisperModel(a.model, device="cpu", local_files_only=True)
    else:
        model = faster_whisper.WhisperModel(a.model, device="cpu", compute_type=a.compute_type,
                                            cpu_threads=a.threads, num_workers=1,
                                            local_files_only=True)
    pipe = faster_whisper.BatchedInferencePipeline(model) if a.batched else None
    t_load = time.time()
    if a.mode == "serve":
        print(json.dumps({"op": "ready", "import_s": t_import - t_start,
                          "load_s": t_load - t_import}), flush=True)
        sys.stdin.readline()
    start = time.time()
    cpu_start = time.process_time()
    texts = []
    for f in a.files:
        samples = decode_audio(f, sampling_rate=16000)
        if a.fw_defaults:
            segments, _info = model.transcribe(samples, vad_filter=True)
        elif pipe is not None:
            segments, _info = pipe.transcribe(samples, beam_size=a.beam,
                                              vad_filter=not a.no_vad, batch_size=a.batched,
                                              temperature=0.0)
        else:
            # cesard's deterministic decoding (cesard.engine.DECODING), without its loop guard
            segments, _info = model.transcribe(samples, beam_size=a.beam,
                                               vad_filter=not a.no_vad, temperature=0.0,
                                               condition_on_previous_text=False)
        texts.append(" ".join(s.text.strip() for s in segments).strip())
    end = time.time()
    cpu = time.process_time() - cpu_start
    print(json.dumps({"op": "done", "process_start": t_start, "import_s": t_import - t_start,
                      "load_s": t_load - t_import, "start": start, "end": end, "cpu_s": cpu,
                      "texts": texts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
