"""whisper.cpp as a bench peer (``--backend whisper-cpp``), through the ``pywhispercpp`` wheel.

The weights are the target's own checkpoint, written as a ggml file by slimwhisper's converter
(``slimwhisper.export.ggml``) once into the cache, keyed by the weights' sha256. The bench may not
import ``export`` (tests/test_architecture.py), so the conversion runs as a child process,
``python -m slimwhisper.export.ggml MODEL FOLDER``; that also keeps torch out of this process,
so its peak RSS is whisper.cpp's own.

Figures come from whisper.cpp itself: ``whisper_print_timings`` (captured through
``whisper_log_set``) gives the encoder time and its number of runs (= 30 s windows); the total is
the wall time of ``whisper_full``, mel spectrogram included, like the other backends.
"""

from __future__ import annotations

import atexit
import collections
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimwhisper.bench.backends import (
    BackendKind,
    BackendUnavailable,
    ClipResult,
    register_backend,
)
from slimwhisper.bench.targets import Target
from slimwhisper.models.cache import DONE_MARKER, converted_dir, file_chunks, sha256_of

GGML_FILE = "ggml-model.bin"  # slimwhisper.export.ggml.MODEL_FILE (not imported: see above)
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.json")
_ENCODE = re.compile(r"encode time\s*=\s*([\d.]+) ms /\s*(\d+) runs")
_LOG: collections.deque[str] = collections.deque(maxlen=400)  # whisper.cpp's log lines, newest last
_LOGGING = False


def _capture_log(pw) -> None:
    """Route whisper.cpp's log into ``_LOG`` (it prints ~40 lines per load to stderr otherwise)."""
    global _LOGGING
    if not _LOGGING:
        pw.whisper_log_set(lambda level, text, *_: _LOG.append(text))
        # The callback must go before interpreter shutdown: whisper.cpp logging from a
        # finalizer into a dead Python callback aborts the process ("GIL is released").
        atexit.register(pw.whisper_log_set, None)
        _LOGGING = True


class _Context:
    """One loaded whisper.cpp model, freed once (runners with other decodings share it)."""

    def __init__(self, pw, path: Path) -> None:
        self.pw = pw
        self.ctx = pw.whisper_init_from_file_with_params(str(path), pw.whisper_context_default_params())
        if self.ctx is None:
            raise RuntimeError(f"whisper.cpp could not load {path}: {' '.join(list(_LOG)[-3:]).strip()}")
        atexit.register(self.free)  # before the log callback is removed (atexit runs last-in first-out)

    def free(self) -> None:
        if self.ctx is not None:
            self.pw.whisper_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.free()


def full_params(pw, decode, language: str, threads: int):
    """whisper.cpp's ``whisper_full_params`` for a slimwhisper ``DecodeConfig``."""
    beam = decode.beam > 1
    p = pw.whisper_full_default_params(pw.whisper_sampling_strategy.WHISPER_SAMPLING_BEAM_SEARCH if beam
                                       else pw.whisper_sampling_strategy.WHISPER_SAMPLING_GREEDY)
    p.n_threads, p.language, p.detect_language, p.translate = threads, language, False, decode.task == "translate"
    # Every clip starts fresh: no_context=False would prompt a clip with the PREVIOUS clip's text
    # (whisper.cpp keeps prompt_past in its state across whisper_full calls). Within a clip, the
    # previous window's text is the prompt unless n_max_text_ctx is 0 (src/whisper.cpp whisper_full_with_state).
    p.no_timestamps, p.no_context = not decode.timestamps, True
    if not decode.condition_on_previous_text:
        p.n_max_text_ctx = 0
    p.print_progress = p.print_realtime = p.print_timestamps = p.print_special = False
    # openai-whisper's fallback: temperatures 0, 0.2 ... 1.0 and log-prob < -1. whisper.cpp tests
    # token entropy < 2.4 where openai tests the gzip ratio > 2.4 (its own repetition rule).
    p.temperature, p.temperature_inc = 0.0, 0.2 if decode.fallback else 0.0
    p.logprob_thold, p.entropy_thold = -1.0, 2.4
    p.no_speech_thold = 0.6 if decode.no_speech else 1.0  # a probability never exceeds 1: rule off
    p.greedy = {"best_of": decode.best_of}
    p.beam_search = {"beam_size": decode.beam if beam else -1, "patience": float(decode.patience) if beam else -1.0}
    p.suppress_blank, p.suppress_nst = True, True  # openai-whisper's suppress_blank, suppress_tokens="-1"
    return p


@dataclass
class WhisperCppRunner:
    context: _Context
    params: Any  # whisper_full_params
    language: str
    threads: int
    info: dict[str, Any] = field(default_factory=dict)

    def with_decoding(self, decode) -> WhisperCppRunner:
        """The same loaded model decoding like ``decode`` (beam, fallback, timestamps, prompt)."""
        params = full_params(self.context.pw, decode, self.language, self.threads)
        return WhisperCppRunner(self.context, params, self.language, self.threads,
                                {**self.info, "decoding": decode.to_dict()})

    def transcribe(self, audio: np.ndarray) -> ClipResult:
        pw, ctx = self.context.pw, self.context.ctx
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        pw.whisper_reset_timings(ctx)
        t0 = time.perf_counter()
        status = pw.whisper_full(ctx, self.params, audio, audio.size)
        total = time.perf_counter() - t0
        if status != 0:
            raise RuntimeError(f"whisper_full returned {status}: {' '.join(list(_LOG)[-3:]).strip()}")
        eot = pw.whisper_token_eot(ctx)
        segments = range(pw.whisper_full_n_segments(ctx))
        text = "".join(pw.whisper_full_get_segment_text(ctx, i).decode("utf-8", errors="replace") for i in segments)
        tokens = sum(pw.whisper_full_get_token_id(ctx, i, j) < eot  # text tokens only, like the others
                     for i in segments for j in range(pw.whisper_full_n_tokens(ctx, i)))
        encoder_s, windows = self._encoder_timing()
        return ClipResult(text.strip(), int(tokens), encoder_s, total, windows)

    def _encoder_timing(self) -> tuple[float, int]:
        """whisper.cpp's own encoder counters for the last call (whisper_print_timings)."""
        _LOG.clear()
        self.context.pw.whisper_print_timings(self.context.ctx)
        for line in _LOG:
            if m := _ENCODE.search(line):
                return float(m.group(1)) / 1000, max(int(m.group(2)), 1)
        raise RuntimeError("whisper_print_timings printed no 'encode time' line; cannot split encoder time")


def weights_key(target: Target) -> str | None:
    """sha256 of the target's weights without loading them (None: not known without a download)."""
    if target.path is None:
        from slimwhisper.models.bundled import BUNDLED

        bundled = BUNDLED.get(target.source)
        return bundled.sha256 if bundled is not None else None
    if target.path.is_file():
        return sha256_of(file_chunks([target.path]))
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in target.path.glob(pattern) if p.is_file()})
    return sha256_of(f.name.encode() + b"\0" + sha256_of(file_chunks([f])).encode() for f in files)


def ggml_file(target: Target) -> Path:
    """The cached ggml conversion of ``target`` (made by a child process on first use)."""
    key = weights_key(target)
    if key is None:
        raise BackendUnavailable(
            f"not available: whisper-cpp converts bundled names and local model folders; for {target.source} "
            "download it to a folder first")
    folder = converted_dir(None, "ggml", key)
    if not (folder / DONE_MARKER).exists():
        source = str(target.path) if target.path is not None else target.source
        done = subprocess.run([sys.executable, "-m", "slimwhisper.export.ggml", source, str(folder)],
                              capture_output=True, text=True, check=False)
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        if done.returncode == 2:  # a UserError: e.g. a pruned (uneven) model whisper.cpp cannot hold
            raise BackendUnavailable(f"not available: {last.removeprefix('error: ')}")
        if done.returncode != 0:
            raise RuntimeError(f"ggml conversion of {target.source} failed: {done.stderr.strip()[-500:]}")
    return folder / GGML_FILE


def _open(target: Target, threads: int) -> WhisperCppRunner:
    import _pywhispercpp as pw

    from slimwhisper.transcribe import DecodeConfig

    path = ggml_file(target)
    _capture_log(pw)
    context = _Context(pw, path)
    multilingual = bool(pw.whisper_is_multilingual(context.ctx))
    language = "en"  # the others' rule (slimwhisper.runtime.decode.forced_language): English, never detected
    # Default like the faster-whisper runner: greedy, no fallback, no timestamps, no previous text.
    decode = DecodeConfig(condition_on_previous_text=False)
    cparams = pw.whisper_context_default_params()
    info = {"threads": threads, "files": str(path), "files_bytes": path.stat().st_size, "weights": "ggml f16",
            "language": language if multilingual else None, "flash_attn": bool(cparams.flash_attn),
            "whisper_cpp": _library_version(), "decoding": decode.to_dict(),
            "system_info": str(pw.whisper_print_system_info()).strip(),  # the CPU features its kernels use
            "timings": "encoder = whisper.cpp's 'encode time' counter (whisper_print_timings); total = whisper_full"}
    return WhisperCppRunner(context, full_params(pw, decode, language, threads), language, threads, info)


def _library_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pywhispercpp {version('pywhispercpp')}"
    except PackageNotFoundError:
        return None


register_backend(BackendKind("whisper-cpp", "model", _open, ("_pywhispercpp",), extra="peers",
                             describe="whisper.cpp (pywhispercpp) fp16 ggml on CPU, converted from the same weights"))
