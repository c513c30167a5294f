"""Transcript output formats: plain text, JSON (segments with start/end), SubRip and WebVTT.
Registered by name (``FORMATS``), standard library only (openai/whisper ``utils.py`` writers)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from slimwhisper.errors import UserError


class FormatError(UserError, ValueError):
    """An unknown output format was asked for."""


def timestamp(seconds: float, sep: str = ",") -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _text(segments: Sequence, meta: dict) -> str:
    return "".join(s.text for s in segments).strip() + "\n"


def _json(segments: Sequence, meta: dict) -> str:
    doc = {**meta, "text": "".join(s.text for s in segments).strip(), "segments": [s.to_dict() for s in segments]}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _srt(segments: Sequence, meta: dict) -> str:
    blocks = [f"{i}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text.strip()}\n"
              for i, s in enumerate(segments, 1)]
    return "\n".join(blocks)


def _vtt(segments: Sequence, meta: dict) -> str:
    blocks = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


FORMATS: dict[str, Callable[[Sequence, dict], str]] = {"text": _text, "json": _json, "srt": _srt, "vtt": _vtt}


def render(fmt: str, segments: Sequence, meta: dict | None = None) -> str:
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt](segments, meta or {})
