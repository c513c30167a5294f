"""Read a long 16 kHz file window by window (a ``runtime.longform.AudioSource``), so an hour of
audio never sits in memory at once: the transcriber asks for 30 s at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from slimwhisper.runtime.frontend import SAMPLE_RATE, AudioError


class FileStream:
    """A seekable libsndfile file at 16 kHz (any channel count, mixed down per read)."""

    def __init__(self, path: Path, handle):
        self.path, self._f = path, handle
        self.samples = int(handle.frames)

    def read(self, start: int, n: int) -> np.ndarray:
        try:
            self._f.seek(start)
            data = self._f.read(n, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"cannot read audio {self.path} at {start / SAMPLE_RATE:.2f} s: {exc}") from exc
        return data.mean(axis=1).astype(np.float32, copy=False) if data.shape[1] > 1 else data[:, 0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def open_stream(path: str | Path) -> FileStream | None:
    """A stream over ``path`` when it is a seekable 16 kHz file, else None (read it whole and
    convert it with ``slimwhisper.audio.read_audio``, which also reports why it cannot be read)."""
    import soundfile as sf

    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if handle.samplerate != SAMPLE_RATE or not handle.seekable() or handle.frames <= 0:
        handle.close()
        return None
    return FileStream(Path(path), handle)
