"""Load a slimwhisper bundle (manifest + ONNX graphs + tokenizer + mel filters) and transcribe.

Imports only numpy, onnxruntime and the standard library: this folder is what ships to a device.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimwhisper.errors import UserError, check_positive_int
from slimwhisper.runtime.decode import (
    CacheLayout,
    DecodeOptions,
    OnnxWhisper,
    forced_language,
)
from slimwhisper.runtime.engine import Specials
from slimwhisper.runtime.filters import unique
from slimwhisper.runtime.frontend import (
    N_SAMPLES,
    SAMPLE_RATE,
    check_audio,
    log_mel,
    resample,
)
from slimwhisper.runtime.longform import (
    ArraySource,
    AudioSource,
    LongForm,
    Segment,
    transcribe_batch,
    transcribe_long,
)
from slimwhisper.runtime.tokenizer import TokenDecoder
from slimwhisper.runtime.vocabmap import VocabMap, VocabMapError

FORMAT = "slimwhisper-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(UserError, RuntimeError):
    """A bundle is missing, altered, of an unknown version, or cannot run here; says what to do."""


# What the runtime reads from a manifest, as (dotted key, type). Checked before use, so a
# hand-edited or truncated manifest is one BundleError naming the key, not a KeyError traceback.
_STR, _INT, _DICT, _LIST = (str,), (int,), (dict,), (list,)
REQUIRED = (
    ("files", _DICT), ("variants", _DICT), ("default_variant", _STR),
    ("model", _DICT), ("model.name", _STR), ("model.multilingual", (bool,)),
    ("spec", _DICT), ("spec.n_text_ctx", _INT), ("spec.decoder", _LIST),
    ("tokenizer", _DICT), ("tokenizer.file", _STR), ("tokenizer.sot", _INT), ("tokenizer.eot", _INT),
    ("tokenizer.no_timestamps", _INT), ("audio", _DICT), ("audio.mel_filters", _STR),
    ("decode", _DICT), ("decode.suppress_tokens", _LIST), ("decode.begin_suppress_tokens", _LIST),
)  # fmt: skip
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true/false", dict: "an object", list: "a list"}


_MISSING = object()


def _lookup(manifest: dict, key: str):
    node = manifest
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def manifest_problems(manifest: object) -> list[str]:
    """Every missing or mistyped key the runtime needs (empty for a complete manifest)."""
    if not isinstance(manifest, dict):
        return [f"the manifest is a JSON {type(manifest).__name__}, not an object"]
    problems = []
    for key, types in REQUIRED:
        value = _lookup(manifest, key)
        if value is _MISSING:
            if "." not in key or _lookup(manifest, key.rsplit(".", 1)[0]) is not _MISSING:
                problems.append(f"missing key {key!r}")  # a missing parent is reported once
        elif not isinstance(value, types) or (types == _INT and isinstance(value, bool)):
            problems.append(f"{key!r} must be {_TYPE_NAMES[types[0]]}, got {type(value).__name__}")
    if not problems:
        problems += _nested_problems(manifest)
    return problems


def _nested_problems(m: dict) -> list[str]:
    problems = [f"files[{k!r}] must be a sha256 string" for k, v in m["files"].items() if not isinstance(v, str)]
    for name, parts in m["variants"].items():
        if not (isinstance(parts, dict) and all(isinstance(parts.get(p), str) for p in ("encoder", "decoder"))):
            problems.append(f"variants[{name!r}] must name an 'encoder' and a 'decoder' file")
    for i, layer in enumerate(m["spec"]["decoder"]):
        attn = layer.get("self_attn") if isinstance(layer, dict) else None
        if not (isinstance(attn, dict) and all(isinstance(attn.get(k), int) for k in ("heads", "qk_dim", "vo_dim"))):
            problems.append(f"spec.decoder[{i}].self_attn must give integer heads, qk_dim and vo_dim")
    if m["model"]["multilingual"] and not isinstance(m["tokenizer"].get("languages"), dict):
        problems.append("a multilingual model needs 'tokenizer.languages' (code -> token id)")
    return problems


@dataclass
class Transcript:
    """Same fields as ``slimwhisper.transcribe.Transcript``."""

    text: str
    tokens: list[int]
    encoder_s: float  # seconds spent in the encoder graph (all windows)
    total_s: float  # front-end + encoder + decoder + detokenisation
    windows: int  # 30 s windows decoded
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    extra: dict = field(default_factory=dict)  # variant, decoding, fallbacks, silent windows


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle_dir: str | Path, *, verify: bool = True) -> dict:
    """Parse ``manifest.json``; with ``verify`` check every listed file's sha256."""
    root = Path(bundle_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} is not a slimwhisper bundle (no {MANIFEST}); create one with `slimwhisper export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from exc
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise BundleError(f"{path}: format is {fmt!r}, expected {FORMAT!r}; this is not a slimwhisper bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format_version {version!r} is not supported by this runtime (reads {FORMAT_VERSION}); "
            "re-export the bundle with this slimwhisper version or upgrade the runtime"
        )
    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(f"{path} is incomplete or damaged: {'; '.join(problems)}; re-export the bundle "
                          "with `slimwhisper export`")
    if verify:
        problems = []
        for name, digest in manifest["files"].items():
            f = root / name
            if not f.is_file():
                problems.append(f"missing file {name}")
            elif sha256_file(f) != digest:
                problems.append(f"{name} was altered (sha256 differs from manifest)")
        if problems:
            raise BundleError(f"bundle {root} failed its integrity check: " + "; ".join(problems)
                              + " — re-export or re-copy the bundle")
    return manifest


def _session(path: Path, threads: int | None, providers: list[str] | None, low_memory: bool = False):
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = providers or ["CPUExecutionProvider"]
    unknown = [p for p in wanted if p not in available]
    if unknown:
        raise BundleError(f"provider(s) {unknown} are not available in this onnxruntime build (available: {available})")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Each session has its own thread pool whose workers keep spinning after run() returns; the
    # encoder's then take the cores from the decoder's and the other way round. Stopping the spin
    # at the end of each run (measured, 10 ljspeech clips, 2 threads, int8 bundles): tiny.en 0.26
    # -> 0.21 s per clip (decoder 4.4 -> 3.1 ms/token), base 0.48 -> 0.38 (encoder 332 -> 277 ms).
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if low_memory:
        # MLAS pre-packs every fp32 weight into a second, GEMM-friendly copy (~+100 MB for tiny.en
        # fp32, measured with VmHWM); the arena keeps freed activation buffers. Both trade memory
        # for speed, so phones with little RAM may turn them off. Measure first: for int8 bundles
        # with fused encoder attention it RAISED peak RSS (base 265 -> 368 MB, one clip).
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=opts, providers=wanted)


def specials_from_manifest(m: dict) -> Specials:
    """The token ids and suppression lists of the engine, as the export wrote them."""
    tok, d = m["tokenizer"], m["decode"]
    return Specials(sot=tok["sot"], eot=tok["eot"], no_timestamps=tok["no_timestamps"],
                    timestamp_begin=tok.get("timestamp_begin"), sot_prev=tok.get("sot_prev"),
                    no_speech=tok.get("no_speech"), suppress=unique(d["suppress_tokens"]),
                    begin_suppress=unique(d["begin_suppress_tokens"]),
                    specials=unique([tok["sot"], tok.get("sot_prev"), tok.get("transcribe"), tok.get("translate"),
                                     tok.get("no_speech")]))


def _vocab_map(root: Path, m: dict, text: TokenDecoder, decoder) -> VocabMap | None:
    """The bundle's id map, refused (one line) unless it fits its tokenizer and its graphs."""
    entry, source_vocab = m.get("vocab_map"), m["spec"].get("source_vocab")
    if entry is None:
        if source_vocab is not None:
            raise BundleError(f"{root}: the vocabulary was pruned but the manifest has no 'vocab_map'; re-export the bundle")
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise BundleError(f"{root}: manifest 'vocab_map' must name its file; re-export the bundle")
    logits = decoder.get_outputs()[0].shape[-1]
    try:
        vmap = VocabMap.load(root / entry["file"])
        vmap.check(vocab=m["spec"].get("vocab"), tokenizer_size=max(text.pieces) + 1, where=str(root))
        vmap.check(vocab=logits if isinstance(logits, int) else None, where=f"{root} decoder graph")
        if source_vocab != vmap.source_vocab:
            raise VocabMapError(f"{root}: the id map is for {vmap.source_vocab} tokens, the manifest's spec says "
                                f"{source_vocab}; re-export the bundle")
    except VocabMapError as exc:
        raise BundleError(str(exc).replace("\n", " ")) from exc
    return vmap


class BundleTranscriber:
    """Transcribe 16 kHz mono numpy audio with a bundle; torch is never imported."""

    def __init__(self, bundle_dir: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 *, variant: str | None = None, options: DecodeOptions | None = None, verify: bool = True,
                 low_memory: bool = False):
        problems: list[str] = []
        check_positive_int(problems, "threads", threads, allow_none=True)
        if problems:  # onnxruntime would take 0 as "its default" and fail on -1 only later
            raise BundleError(problems[0])
        self.root = Path(bundle_dir)
        self.manifest = m = read_manifest(self.root, verify=verify)
        self.variant = variant or m["default_variant"]
        if self.variant not in m["variants"]:
            raise BundleError(f"variant {self.variant!r} is not in this bundle (has {sorted(m['variants'])})")
        files = m["variants"][self.variant]
        self.options = options or DecodeOptions()
        tok = m["tokenizer"]
        self.tokens = tok
        self.specials = specials_from_manifest(m)
        if self.options.engine.timestamps and self.specials.timestamp_begin is None:
            raise BundleError(f"{self.root}: this bundle's tokenizer has no timestamp tokens; decode without timestamps")
        self.mel_filters = np.load(self.root / m["audio"]["mel_filters"])
        self.text = TokenDecoder(self.root / tok["file"], first_special=tok["eot"])
        enc = _session(self.root / files["encoder"], threads, providers, low_memory)
        dec = _session(self.root / files["decoder"], threads, providers, low_memory)
        # Vocabulary-pruned (issue 12): the manifest's ids are original ids; the engine decodes in
        # the graphs' ids, and ids are mapped back before detokenising and in every transcript.
        self.vmap = _vocab_map(self.root, m, self.text, dec)
        if self.vmap is not None:
            self.specials = self.vmap.specials(self.specials)
        self.model = OnnxWhisper(enc, dec, CacheLayout.from_spec(m["spec"]), n_text_ctx=m["spec"]["n_text_ctx"])
        self.multilingual = bool(m["model"]["multilingual"])
        self.name = f"{m['model']['name']}[{self.variant}]"  # the Transcriber protocol's name

    @property
    def decoder(self) -> OnnxWhisper:
        """The old name of ``model`` (``experiments/runtime_vs_faster_whisper.py`` swaps its sessions)."""
        return self.model

    def with_options(self, options: DecodeOptions) -> BundleTranscriber:
        """The same sessions decoding with other ``options`` (nothing is loaded again)."""
        other = copy.copy(self)
        other.options = options
        return other

    def with_config(self, config) -> BundleTranscriber:
        """``with_options`` from a ``slimwhisper.transcribe.DecodeConfig`` (duck-typed: no import)."""
        return self.with_options(DecodeOptions(max_new_tokens=config.max_new_tokens, language=self.options.language,
                                               task=self.options.task, decoding=config.engine()))

    # ---- prompt -------------------------------------------------------------------------------
    def prompt(self, language: str | None) -> list[int]:
        """The sot sequence (without <|notimestamps|>, which the engine adds when asked)."""
        tok = self.tokens
        if not self.multilingual:
            return self._ids([tok["sot"]])
        language = forced_language(language, True)  # None: English, the rule of every backend
        if language not in tok["languages"]:
            raise BundleError(f"language {language!r} is not one of this model's {len(tok['languages'])} languages")
        return self._ids([tok["sot"], tok["languages"][language], tok[self.options.task]])

    def _ids(self, ids: list[int]) -> list[int]:
        """Original ids -> the graphs' ids (the same unless the vocabulary was pruned)."""
        return ids if self.vmap is None else self.vmap.to_new(ids)

    def features(self, audio: np.ndarray) -> np.ndarray:
        return log_mel(audio, self.mel_filters)[None]

    def detok(self, ids: list[int]) -> str:
        return self.text.decode(ids if self.vmap is None else self.vmap.to_orig(ids))

    # ---- public API ---------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, sr: int = SAMPLE_RATE, *, where: str = "audio") -> Transcript:
        """Audio of any length: openai/whisper's seeking over 30 s windows (``runtime.longform``),
        with the options' search, timestamps, fallback and no-speech rule. ``where`` names the
        audio in an ``AudioError`` (e.g. its file)."""
        return self.transcribe_source(ArraySource(resample(check_audio(audio, where), sr)), where=where)

    def transcribe_source(self, source: AudioSource, *, where: str = "audio") -> Transcript:
        """Like ``transcribe`` for audio read window by window (a long file: memory stays flat)."""
        t0 = time.perf_counter()
        language = self._language(source)
        long = transcribe_long(self.model, source, lambda a: log_mel(a, self.mel_filters), self.prompt(language),
                               self.specials, self.options.engine, self.detok, where)
        return self._transcript(long, time.perf_counter() - t0, language)

    def transcribe_batch(self, audios: list[np.ndarray], *, where: list[str] | None = None) -> list[Transcript]:
        """Several clips of up to 30 s through the encoder and the decoder at once (one prompt, no
        previous text: faster-whisper's batched pipeline); longer clips go through ``transcribe``."""
        where = where or [f"audio[{i}]" for i in range(len(audios))]
        clips = [check_audio(a, w) for a, w in zip(audios, where)]
        out = {i: self.transcribe(c, where=w) for i, (c, w) in enumerate(zip(clips, where)) if c.size > N_SAMPLES}
        short = [i for i in range(len(clips)) if i not in out]
        if short:
            t0 = time.perf_counter()
            language = forced_language(self.options.language, self.multilingual)
            longs = transcribe_batch(self.model, [clips[i] for i in short], lambda a: log_mel(a, self.mel_filters),
                                     self.prompt(language), self.specials, self.options.engine, self.detok)
            each = (time.perf_counter() - t0) / len(short)
            out.update({i: self._transcript(long, each, language) for i, long in zip(short, longs)})
        return [out[i] for i in range(len(clips))]

    def _language(self, source: AudioSource) -> str | None:
        language = forced_language(self.options.language, self.multilingual)
        if self.multilingual and self.options.language == "auto":  # from the first window
            cross = self.model.encode(self.features(source.read(0, N_SAMPLES)))
            languages = {k: self._ids([v])[0] for k, v in self.tokens["languages"].items()}
            language = self.model.detect_language(cross, self._ids([self.tokens["sot"]])[0], languages)
        return language

    def _transcript(self, long: LongForm, total_s: float, language: str | None) -> Transcript:
        long = long if self.vmap is None else self.vmap.longform(long)
        extra = {"variant": self.variant, "decoding": self.options.engine.describe(), "fallbacks": long.fallbacks,
                 "silent_windows": long.skipped_silent}
        return Transcript(long.text, long.tokens, long.encoder_s, total_s, long.windows, long.segments,
                          language if self.multilingual else None, extra)

    def transcribe_file(self, path: str | os.PathLike) -> Transcript:
        """Read a WAV file with the standard library (other formats: decode to numpy yourself)."""
        import wave

        try:
            with wave.open(str(path), "rb") as w:
                if w.getsampwidth() != 2:
                    raise BundleError(f"{path}: only 16-bit PCM WAV is read without extra packages")
                raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
                rate, channels = w.getframerate(), w.getnchannels()
        except (wave.Error, EOFError) as exc:  # FLAC, MP3, a truncated header: not a WAV file
            raise BundleError(f"{path}: not a readable WAV file ({exc}); convert it to 16-bit PCM WAV or pass "
                              "decoded audio to transcribe()") from exc
        audio = raw.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
        return self.transcribe(audio, rate, where=str(path))
