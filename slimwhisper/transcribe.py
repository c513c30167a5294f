"""Speech -> text with a loaded Whisper (torch) or an exported ONNX bundle, behind one interface.

``Transcriber`` is the protocol every backend meets: ``name`` and ``transcribe(audio) ->
Transcript``. Backends are registered by name in ``BACKENDS`` (``torch``: a ``--model`` source via
``slimwhisper.models.load_model``; ``bundle``: ``slimwhisper.runtime.BundleTranscriber``), each
imported only when used, so evaluating a bundle never imports torch.

Audio longer than 30 s is cut into consecutive 30 s windows, each decoded on its own and the
texts joined. This is simpler than Whisper's timestamp-driven seeking (Radford et al. 2022,
sec. 4.5) and can split a word at a window edge, but it never drops audio silently.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from slimwhisper.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
MAX_TARGET_TOKENS = 448  # Whisper's decoder context (n_text_ctx)


class DecodeError(ValueError):
    """A decoding setting cannot be honoured; the message says which and what to do."""


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode. Defaults are greedy English transcription without timestamps.

    ``language=None`` means "en" for multilingual models (forced, not detected: detection on
    short clips is a source of errors that has nothing to do with model size). ``max_new_tokens``
    bounds tokens per 30 s window; 224 is openai-whisper's ``sample_len`` (n_text_ctx // 2).
    """

    beam: int = 1
    language: str | None = None
    task: str = "transcribe"
    max_new_tokens: int = 224

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.beam, int) or self.beam < 1:
            problems.append(f"beam must be an integer >= 1 (1 = greedy), got {self.beam!r}")
        if self.task not in ("transcribe", "translate"):
            problems.append(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if self.language is not None and (not isinstance(self.language, str) or not self.language.strip()):
            problems.append(f"language must be a code such as 'en' or None, got {self.language!r}")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_TARGET_TOKENS - 4:
            problems.append(f"max_new_tokens must be in 1..{MAX_TARGET_TOKENS - 4}, got {self.max_new_tokens!r}")
        if problems:
            raise DecodeError("invalid DecodeConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {"beam": self.beam, "language": self.language, "task": self.task, "max_new_tokens": self.max_new_tokens}


@dataclass
class Transcript:
    text: str
    tokens: list[int]  # text tokens over all windows (no prompt/special tokens, no EOS)
    encoder_s: float  # seconds spent in encoder calls (one per window)
    total_s: float  # wall seconds for the whole transcription, features included
    windows: int
    window_texts: list[str] = field(default_factory=list)


@runtime_checkable
class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray) -> Transcript: ...


def split_windows(audio: np.ndarray) -> list[np.ndarray]:
    """Consecutive 30 s pieces covering all of ``audio`` (none for empty audio)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    return [audio[i : i + WINDOW_SAMPLES] for i in range(0, audio.size, WINDOW_SAMPLES)]


class TorchTranscriber:
    """Transcribes with a ``LoadedModel`` through transformers' ``generate``."""

    def __init__(self, loaded: LoadedModel, config: DecodeConfig | None = None) -> None:
        self.loaded = loaded
        self.config = config or DecodeConfig()
        self.name = loaded.name
        self._prompt = _prompt_kwargs(loaded, self.config)
        self._generation = _generation_config(loaded, self.config)
        tokenizer = loaded.processor.tokenizer
        self._special = set(tokenizer.all_special_ids)
        first = tokenizer.convert_tokens_to_ids("<|0.00|>")
        # A tokenizer without timestamp tokens maps "<|0.00|>" to the unknown id: then none exist.
        self._first_timestamp = first if tokenizer.convert_ids_to_tokens(first) == "<|0.00|>" else None

    def transcribe(self, audio: np.ndarray) -> Transcript:
        import torch

        start = time.perf_counter()
        texts, tokens, encoder_s = [], [], 0.0
        windows = split_windows(audio)
        for window in windows:
            with torch.inference_mode():
                feats = self._features(window)
                t0 = time.perf_counter()
                encoded = self.loaded.model.get_encoder()(feats)
                encoder_s += time.perf_counter() - t0
                out = self.loaded.model.generate(
                    encoder_outputs=encoded, generation_config=self._generation, **self._prompt
                )
            ids = [int(t) for t in out[0].tolist() if not self._is_special(int(t))]
            tokens.extend(ids)
            texts.append(self.loaded.processor.tokenizer.decode(ids, skip_special_tokens=True).strip())
        text = " ".join(t for t in texts if t)
        return Transcript(text, tokens, encoder_s, time.perf_counter() - start, len(windows), texts)

    def _features(self, window: np.ndarray):
        fe = self.loaded.processor.feature_extractor
        feats = fe(window, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        param = next(self.loaded.model.parameters())
        return feats.to(device=param.device, dtype=param.dtype)

    def _is_special(self, token: int) -> bool:
        # Timestamp tokens are ordinary added tokens in the HF vocab; they start at <|0.00|>.
        return token in self._special or (self._first_timestamp is not None and token >= self._first_timestamp)


def _generation_config(loaded: LoadedModel, config: DecodeConfig):
    """The loaded model's generation settings (suppress lists, alignment heads...) plus ours."""
    gen = copy.deepcopy(loaded.model.generation_config)
    gen.num_beams = config.beam
    gen.do_sample = False
    gen.max_new_tokens = config.max_new_tokens
    gen.max_length = None  # max_new_tokens bounds each window; two limits only trigger warnings
    gen.return_timestamps = False
    return gen


def _prompt_kwargs(loaded: LoadedModel, config: DecodeConfig) -> dict:
    """language/task for generate(); English-only models take neither (transformers refuses them)."""
    if not loaded.multilingual:
        if config.language not in (None, "en", "english") or config.task != "transcribe":
            raise DecodeError(
                f"{loaded.name} is an English-only model: it cannot decode language={config.language!r} "
                f"task={config.task!r}; use a multilingual model (e.g. --model base) or drop --language"
            )
        return {}
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    language = (config.language or "en").lower().strip("<|>")
    language = TO_LANGUAGE_CODE.get(language, language)  # "english" -> "en", as transformers accepts
    lang_to_id = getattr(loaded.model.generation_config, "lang_to_id", None) or {}
    if lang_to_id and f"<|{language}|>" not in lang_to_id:
        codes = ", ".join(sorted(k.strip("<|>") for k in lang_to_id)[:12])
        raise DecodeError(f"unknown language {config.language!r} for {loaded.name}; use a code such as {codes}, ...")
    return {"language": language, "task": config.task}


# ---- backends: name -> factory(source, decode config, threads) ----------------------------------


@dataclass(frozen=True)
class BackendRequest:
    source: str  # --model value or bundle folder
    decode: DecodeConfig
    threads: int | None = None


def _torch_backend(req: BackendRequest) -> Transcriber:
    from slimwhisper.models import load_model  # deferred: torch + transformers

    if req.threads:
        import torch

        torch.set_num_threads(req.threads)
    return TorchTranscriber(load_model(req.source), req.decode)


def _bundle_backend(req: BackendRequest) -> Transcriber:
    if req.decode.beam != 1:
        raise DecodeError("an ONNX bundle decodes greedily; drop --beam or use --model for beam search")
    from slimwhisper.runtime import BundleTranscriber, DecodeOptions, read_manifest  # onnxruntime only

    bundle = Path(req.source)
    if not bundle.is_dir():
        raise DecodeError(f"no bundle folder at {bundle}: pass the folder written by 'slimwhisper export'")
    model = read_manifest(bundle, verify=False).get("model", {})
    # Same language rule as the torch path: forced "en" for multilingual models unless told
    # otherwise (the runtime would detect it, which makes the two backends incomparable).
    language = req.decode.language or ("en" if model.get("multilingual") else None)
    options = DecodeOptions(max_new_tokens=req.decode.max_new_tokens, language=language, task=req.decode.task)
    transcriber = BundleTranscriber(bundle, threads=req.threads, options=options)
    if not getattr(transcriber, "name", None):
        transcriber.name = f"{model.get('name', bundle.name)} [bundle {bundle.name}]"
    return transcriber


BACKENDS: dict[str, Callable[[BackendRequest], Transcriber]] = {
    "torch": _torch_backend,
    "bundle": _bundle_backend,
}


def make_transcriber(backend: str, source: str, decode: DecodeConfig | None = None, threads: int | None = None) -> Transcriber:
    if backend not in BACKENDS:
        raise DecodeError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[backend](BackendRequest(str(source), decode or DecodeConfig(), threads))
