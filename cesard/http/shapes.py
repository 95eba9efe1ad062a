"""OpenAI's shapes for cesard's results: the ``response_format`` bodies of
``/v1/audio/transcriptions`` (json, text, srt, vtt, verbose_json), the streaming
events (``transcript.text.delta`` / ``.done``) and the error body."""

from __future__ import annotations

import json
from typing import Any

from cesard import outputs

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA = {"json": "application/json", "verbose_json": "application/json",
         "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
         "vtt": "text/vtt; charset=utf-8"}

# Whisper's languages, as OpenAI names them in verbose_json ("language": "english").
_NAMES = (
    "en english zh chinese de german es spanish ru russian ko korean fr french ja japanese "
    "pt portuguese tr turkish pl polish ca catalan nl dutch ar arabic sv swedish it italian "
    "id indonesian hi hindi fi finnish vi vietnamese he hebrew uk ukrainian el greek "
    "ms malay cs czech ro romanian da danish hu hungarian ta tamil no norwegian th thai "
    "ur urdu hr croatian bg bulgarian lt lithuanian la latin mi maori ml malayalam "
    "cy welsh sk slovak te telugu fa persian lv latvian bn bengali sr serbian "
    "az azerbaijani sl slovenian kn kannada et estonian mk macedonian br breton "
    "eu basque is icelandic hy armenian ne nepali mn mongolian bs bosnian kk kazakh "
    "sq albanian sw swahili gl galician mr marathi pa punjabi si sinhala km khmer "
    "sn shona yo yoruba so somali af afrikaans oc occitan ka georgian be belarusian "
    "tg tajik sd sindhi gu gujarati am amharic yi yiddish lo lao uz uzbek fo faroese "
    "ht haitian_creole ps pashto tk turkmen nn nynorsk mt maltese sa sanskrit "
    "lb luxembourgish my myanmar bo tibetan tl tagalog mg malagasy as assamese tt tatar "
    "haw hawaiian ln lingala ha hausa ba bashkir jw javanese su sundanese yue cantonese")
_words = _NAMES.split()
LANGUAGES = {code: name.replace("_", " ") for code, name in zip(_words[::2], _words[1::2],
                                                                strict=True)}


def language_name(code: str | None) -> str:
    return LANGUAGES.get(code or "", code or "")


def error(message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, **extra: Any) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      **extra}}


def verbose(result: dict[str, Any], words: bool, segments: bool = True) -> dict[str, Any]:
    """``verbose_json``: task, language, duration, text, segments and (asked) words."""
    body: dict[str, Any] = {
        "task": "translate" if (result.get("options") or {}).get("task") == "translate"
        else "transcribe",
        "language": language_name(result.get("language")),
        "duration": result.get("duration") or 0.0,
        "text": result.get("text") or ""}
    if segments:
        body["segments"] = [
            {"id": i, "seek": 0, "start": s["start"], "end": s["end"], "text": s["text"],
             "tokens": [], "temperature": 0.0,
             "avg_logprob": (result.get("decoding") or {}).get("mean_logprob") or 0.0,
             "compression_ratio": 0.0, "no_speech_prob": 0.0,
             **({"speaker": s["speaker"]} if s.get("speaker") else {})}
            for i, s in enumerate(result.get("segments") or [])]
    if words:
        body["words"] = [{"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
                         for s in result.get("segments") or [] for w in s.get("words") or []]
    return body


def render(result: dict[str, Any], fmt: str, words: bool, segments: bool) -> str:
    """The body of a finished transcription in ``fmt``."""
    if fmt == "text":
        return outputs.to_txt(result)
    if fmt in ("srt", "vtt"):
        return outputs.RENDER[fmt](result)
    if fmt == "verbose_json":
        return json.dumps(verbose(result, words, segments), ensure_ascii=False)
    return json.dumps({"text": result.get("text") or ""}, ensure_ascii=False)


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``event`` as JSON (OpenAI's stream: data lines)."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def delta(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": text, "logprobs": None}


def done(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text, "logprobs": None}
