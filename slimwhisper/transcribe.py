"""Speech -> text with a loaded Whisper (torch) or an exported ONNX bundle, behind one interface.

``Transcriber`` is the protocol every backend meets: ``name`` and ``transcribe(audio) ->
Transcript`` (and ``transcribe_batch(clips)``). Backends are registered by name in ``BACKENDS``
(``torch``: a ``--model`` source via ``slimwhisper.models.load_model``; ``bundle``:
``slimwhisper.runtime.BundleTranscriber``), each imported only when used, so evaluating a bundle
never imports torch.

Both backends decode with the runtime's one engine (``slimwhisper.runtime.engine``: filters,
greedy/beam search, temperature fallback, no-speech rule) and its long-form loop
(``runtime.longform``: openai/whisper's timestamp-based seeking, ``condition_on_previous_text``).
``DecodeConfig()`` is plain greedy decoding without timestamps or fallback (what prune/recover
measure); ``DecodeConfig.whisper()`` is openai-whisper's transcribe defaults (the CLI's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from slimwhisper.errors import UserError, check_positive_int, raise_problems
from slimwhisper.runtime.decode import forced_language
from slimwhisper.runtime.engine import TEMPERATURES, DecodingOptions
from slimwhisper.runtime.frontend import CHUNK_SECONDS as WINDOW_SECONDS
from slimwhisper.runtime.frontend import N_SAMPLES as WINDOW_SAMPLES
from slimwhisper.runtime.frontend import SAMPLE_RATE, check_audio
from slimwhisper.runtime.longform import (
    ArraySource,
    AudioSource,
    LongForm,
    Segment,
    transcribe_batch,
    transcribe_long,
)

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

__all__ = [
    "BACKENDS",
    "WINDOW_SAMPLES",
    "WINDOW_SECONDS",
    "DecodeConfig",
    "DecodeError",
    "TorchTranscriber",
    "Transcriber",
    "Transcript",
    "decoding_label",
    "make_transcriber",
    "split_windows",
]

MAX_TARGET_TOKENS = 448  # Whisper's decoder context (n_text_ctx)


class DecodeError(UserError, ValueError):
    """A decoding setting cannot be honoured; the message says what to do."""


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode (both backends). Defaults: greedy English transcription without timestamps,
    fallback or no-speech rule; ``DecodeConfig.whisper()`` gives openai-whisper's defaults.

    ``language=None`` means English for multilingual models (forced, not detected; the rule is
    ``slimwhisper.runtime.decode.forced_language``, shared with the bundle runtime). ``max_new_tokens``
    bounds tokens per 30 s window; 224 is openai-whisper's ``sample_len`` (n_text_ctx // 2).
    ``fallback``: retry a window at temperatures 0.2 ... 1.0 when its text compresses > 2.4x or its
    mean log-prob is < -1 (openai-whisper). ``no_speech``: skip a window whose <|nospeech|>
    probability is > 0.6 unless it decoded confidently (avg log-prob > -1).
    """

    beam: int = 1
    language: str | None = None
    task: str = "transcribe"
    max_new_tokens: int = 224
    timestamps: bool = False
    fallback: bool = False
    no_speech: bool = False
    condition_on_previous_text: bool = True
    patience: float = 1.0
    best_of: int = 5

    @classmethod
    def whisper(cls, *, beam: int = 1, language: str | None = None, fallback: bool = True,
                timestamps: bool = True, **kw) -> DecodeConfig:
        """openai-whisper's transcribe defaults: timestamps, fallback, no-speech rule, previous text."""
        return cls(beam=beam, language=language, fallback=fallback, timestamps=timestamps, no_speech=True, **kw)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.beam, bool) or not isinstance(self.beam, int) or self.beam < 1:
            problems.append(f"beam must be an integer >= 1 (1 = greedy), got {self.beam!r}")
        if self.task not in ("transcribe", "translate"):
            problems.append(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if self.language is not None and (not isinstance(self.language, str) or not self.language.strip()):
            problems.append(f"language must be a code such as 'en' or None, got {self.language!r}")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_TARGET_TOKENS - 4:
            problems.append(f"max_new_tokens must be in 1..{MAX_TARGET_TOKENS - 4}, got {self.max_new_tokens!r}")
        if not (isinstance(self.patience, (int, float)) and self.patience > 0):
            problems.append(f"patience must be > 0, got {self.patience!r}")
        check_positive_int(problems, "best_of", self.best_of)
        raise_problems(DecodeError, "invalid decoding settings", problems)

    def engine(self) -> DecodingOptions:
        """The runtime engine's options for this config (the same for both backends)."""
        return DecodingOptions(beam_size=self.beam, patience=float(self.patience), best_of=self.best_of,
                               sample_len=self.max_new_tokens, timestamps=self.timestamps, fallback=self.fallback,
                               temperatures=TEMPERATURES,
                               no_speech_threshold=0.6 if self.no_speech else None,
                               silence_dbfs=-60.0 if self.no_speech else None,
                               condition_on_previous_text=self.condition_on_previous_text)

    def to_dict(self) -> dict:
        return {"beam": self.beam, "language": self.language, "task": self.task, "max_new_tokens": self.max_new_tokens,
                "timestamps": self.timestamps, "fallback": self.fallback, "no_speech": self.no_speech,
                "silence_dbfs": -60.0 if self.no_speech else None,
                "condition_on_previous_text": self.condition_on_previous_text, "patience": self.patience,
                "best_of": self.best_of, "temperatures": list(TEMPERATURES if self.fallback else TEMPERATURES[:1]),
                "search": "beam" if self.beam > 1 else "greedy"}


def decoding_label(d: dict | None) -> str:
    """``DecodeConfig.to_dict()`` in a few words, for summaries and report tables."""
    if not d:
        return "decoding unknown"
    search = f"beam {d['beam']}" if d.get("beam", 1) > 1 else "greedy"
    parts = [search, "fallback" if d.get("fallback") else "no fallback"]
    parts += ["timestamps"] if d.get("timestamps") else []
    return ", ".join(parts)


@dataclass
class Transcript:
    text: str
    tokens: list[int]  # text tokens over all windows (no prompt/special/timestamp tokens, no EOS)
    encoder_s: float  # seconds spent in encoder calls (one per window)
    total_s: float  # wall seconds for the whole transcription, features included
    windows: int
    segments: list[Segment] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # decoding, fallbacks, silent windows


@runtime_checkable
class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray) -> Transcript: ...


def split_windows(audio: np.ndarray) -> list[np.ndarray]:
    """Consecutive 30 s pieces covering all of ``audio`` (none for empty audio)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    return [audio[i : i + WINDOW_SAMPLES] for i in range(0, audio.size, WINDOW_SAMPLES)]


class TorchTranscriber:
    """Transcribes with a ``LoadedModel``: transformers computes the logits, the runtime's engine decides."""

    def __init__(self, loaded: LoadedModel, config: DecodeConfig | None = None) -> None:
        from slimwhisper.decoding_torch import TorchWhisper, specials_for

        self.loaded = loaded
        self.config = config or DecodeConfig()
        self.name = loaded.name
        self._prompt = _prompt_kwargs(loaded, self.config)
        self.model = TorchWhisper(loaded.model)
        # Vocabulary-pruned (issue 12): the engine decodes in the model's ids; every id a caller
        # sees (tokens, segments) and every detokenised id is mapped back to the original.
        self.vmap = getattr(loaded.model, "slim_vocab", None)
        self.specials = specials_for(loaded)  # in the model's ids
        if self.config.timestamps and self.specials.timestamp_begin is None:
            raise DecodeError(f"{loaded.name}'s tokenizer has no timestamp tokens; decode without timestamps")
        self.options = self.config.engine()
        self.sot_sequence = self._sot_sequence()

    def with_config(self, config: DecodeConfig) -> TorchTranscriber:
        """The same loaded model decoding with ``config`` (nothing is loaded again)."""
        return TorchTranscriber(self.loaded, config)

    def _sot_sequence(self) -> list[int]:
        ids = self.loaded.processor.tokenizer.convert_tokens_to_ids
        seq = []  # after specials.sot, which is already in the model's ids
        if self._prompt:
            seq += [ids(f"<|{self._prompt['language']}|>"), ids(f"<|{self._prompt['task']}|>")]
        return [self.specials.sot] + (seq if self.vmap is None else self.vmap.to_new(seq))

    def features(self, window: np.ndarray) -> np.ndarray:
        fe = self.loaded.processor.feature_extractor
        return fe(window, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]

    def detok(self, ids: list[int]) -> str:
        text = [t for t in ids if t < self.specials.eot]
        text = text if self.vmap is None else self.vmap.to_orig(text)
        return self.loaded.processor.tokenizer.decode(text, skip_special_tokens=True)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        audio = np.asarray(audio)
        if audio.size == 0:
            return Transcript("", [], 0.0, 0.0, 0)
        return self.transcribe_source(ArraySource(check_audio(audio)))

    def transcribe_source(self, source: AudioSource, *, where: str = "audio") -> Transcript:
        start = time.perf_counter()
        long = transcribe_long(self.model, source, self.features, self.sot_sequence, self.specials, self.options,
                               self.detok, where)
        long = long if self.vmap is None else self.vmap.longform(long)
        return _transcript(long, time.perf_counter() - start, self.config)

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Clips of up to 30 s through encoder and decoder together; longer ones one by one."""
        clips = [check_audio(a) if np.asarray(a).size else np.zeros(0, np.float32) for a in audios]
        out = {i: self.transcribe(c) for i, c in enumerate(clips) if c.size > WINDOW_SAMPLES or c.size == 0}
        short = [i for i in range(len(clips)) if i not in out]
        if short:
            start = time.perf_counter()
            longs = transcribe_batch(self.model, [clips[i] for i in short], self.features, self.sot_sequence,
                                     self.specials, self.options, self.detok)
            longs = longs if self.vmap is None else [self.vmap.longform(long) for long in longs]
            each = (time.perf_counter() - start) / len(short)
            out.update({i: _transcript(long, each, self.config) for i, long in zip(short, longs)})
        return [out[i] for i in range(len(clips))]


def _transcript(long: LongForm, total_s: float, config: DecodeConfig) -> Transcript:
    extra = {"decoding": config.to_dict(), "fallbacks": long.fallbacks, "silent_windows": long.skipped_silent}
    return Transcript(long.text, long.tokens, long.encoder_s, total_s, long.windows, long.segments, extra)


def _prompt_kwargs(loaded: LoadedModel, config: DecodeConfig) -> dict:
    """language/task for generate(); English-only models take neither (transformers refuses them)."""
    if not loaded.multilingual:
        _check_english_only(loaded.name, config)
        return {}
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    language = forced_language(config.language, True).lower().strip("<|>")
    language = TO_LANGUAGE_CODE.get(language, language)  # "english" -> "en", as transformers accepts
    lang_to_id = getattr(loaded.model.generation_config, "lang_to_id", None) or {}
    if lang_to_id and f"<|{language}|>" not in lang_to_id:
        codes = ", ".join(sorted(k.strip("<|>") for k in lang_to_id)[:12])
        raise DecodeError(f"unknown language {config.language!r} for {loaded.name}; use a code such as {codes}, ...")
    return {"language": language, "task": config.task}


def _check_english_only(name: str, config: DecodeConfig) -> None:
    """An English-only model cannot follow another language or translate: refused on every backend."""
    if config.language not in (None, "en", "english") or config.task != "transcribe":
        raise DecodeError(
            f"{name} is an English-only model: it cannot decode language={config.language!r} "
            f"task={config.task!r}; use a multilingual model (e.g. --model base) or drop --language"
        )


# ---- backends: name -> factory(source, decode config, threads) ----------------------------------


@dataclass(frozen=True)
class BackendRequest:
    source: str  # --model value or bundle folder
    decode: DecodeConfig
    threads: int | None = None

    def __post_init__(self) -> None:
        # Checked here, for every backend: torch.set_num_threads(-1) is a RuntimeError traceback
        # and 0 would silently mean "all cores".
        problems: list[str] = []
        check_positive_int(problems, "--threads", self.threads, allow_none=True)
        if problems:
            raise DecodeError(problems[0])


def _torch_backend(req: BackendRequest) -> Transcriber:
    from slimwhisper.models import load_model  # deferred: torch + transformers

    if req.threads is not None:
        import torch

        torch.set_num_threads(req.threads)
    return TorchTranscriber(load_model(req.source), req.decode)


def _bundle_backend(req: BackendRequest) -> Transcriber:
    from slimwhisper.runtime import (  # onnxruntime only
        BundleTranscriber,
        DecodeOptions,
        read_manifest,
    )

    bundle = Path(req.source)
    if not bundle.is_dir():
        raise DecodeError(f"no bundle folder at {bundle}: pass the folder written by 'slimwhisper export'")
    model = read_manifest(bundle, verify=False)["model"]
    if not model["multilingual"]:
        _check_english_only(model["name"], req.decode)
    # The runtime applies the same language rule (forced_language) as the torch path.
    options = DecodeOptions(max_new_tokens=req.decode.max_new_tokens, language=req.decode.language,
                            task=req.decode.task, decoding=req.decode.engine())
    return BundleTranscriber(bundle, threads=req.threads, options=options)


BACKENDS: dict[str, Callable[[BackendRequest], Transcriber]] = {
    "torch": _torch_backend,
    "bundle": _bundle_backend,
}


def make_transcriber(backend: str, source: str, decode: DecodeConfig | None = None, threads: int | None = None) -> Transcriber:
    if backend not in BACKENDS:
        raise DecodeError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[backend](BackendRequest(str(source), decode or DecodeConfig(), threads))
