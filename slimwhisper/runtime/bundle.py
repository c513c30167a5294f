"""Load a slimwhisper bundle (manifest + ONNX graphs + tokenizer + mel filters) and transcribe.

Imports only numpy, onnxruntime and the standard library: this folder is what ships to a device.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimwhisper.runtime.decode import CacheLayout, DecodeOptions, GreedyDecoder
from slimwhisper.runtime.frontend import SAMPLE_RATE, check_audio, log_mel, resample, windows
from slimwhisper.runtime.tokenizer import TokenDecoder

FORMAT = "slimwhisper-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle is missing, altered, of an unknown version, or cannot run here; says what to do."""


@dataclass
class Transcript:
    """Same fields as ``slimwhisper.transcribe.Transcript``."""

    text: str
    tokens: list[int]
    encoder_s: float  # seconds spent in the encoder graph (all windows)
    total_s: float  # front-end + encoder + decoder + detokenisation
    windows: int  # 30 s windows decoded
    window_texts: list[str] = field(default_factory=list)
    language: str | None = None
    extra: dict = field(default_factory=dict)


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
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format_version {version!r} is not supported by this runtime (reads {FORMAT_VERSION}); "
            "re-export the bundle with this slimwhisper version or upgrade the runtime"
        )
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
    if low_memory:
        # MLAS pre-packs every fp32 weight into a second, GEMM-friendly copy (~+100 MB for tiny.en
        # fp32, measured with VmHWM); the arena keeps freed activation buffers. Both trade memory
        # for speed, so phones with little RAM may turn them off.
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=opts, providers=wanted)


class BundleTranscriber:
    """Transcribe 16 kHz mono numpy audio with a bundle; torch is never imported."""

    def __init__(self, bundle_dir: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 *, variant: str | None = None, options: DecodeOptions | None = None, verify: bool = True,
                 low_memory: bool = False):
        self.root = Path(bundle_dir)
        self.manifest = m = read_manifest(self.root, verify=verify)
        self.variant = variant or m["default_variant"]
        if self.variant not in m["variants"]:
            raise BundleError(f"variant {self.variant!r} is not in this bundle (has {sorted(m['variants'])})")
        files = m["variants"][self.variant]
        self.options = options or DecodeOptions()
        tok = m["tokenizer"]
        self.tokens = tok
        self.mel_filters = np.load(self.root / m["audio"]["mel_filters"])
        self.text = TokenDecoder(self.root / tok["file"], first_special=tok["eot"])
        enc = _session(self.root / files["encoder"], threads, providers, low_memory)
        dec = _session(self.root / files["decoder"], threads, providers, low_memory)
        d = m["decode"]
        self.decoder = GreedyDecoder(enc, dec, CacheLayout.from_spec(m["spec"]), eot=tok["eot"],
                                     suppress=d["suppress_tokens"], begin_suppress=d["begin_suppress_tokens"],
                                     n_text_ctx=m["spec"]["n_text_ctx"])
        self.multilingual = bool(m["model"]["multilingual"])
        self.name = f"{m['model']['name']}[{self.variant}]"  # the Transcriber protocol's name

    # ---- prompt -------------------------------------------------------------------------------
    def prompt(self, language: str | None) -> list[int]:
        tok = self.tokens
        if not self.multilingual:
            return [tok["sot"], tok["no_timestamps"]]
        if language not in tok["languages"]:
            raise BundleError(f"language {language!r} is not one of this model's {len(tok['languages'])} languages")
        return [tok["sot"], tok["languages"][language], tok[self.options.task], tok["no_timestamps"]]

    def features(self, audio: np.ndarray) -> np.ndarray:
        return log_mel(audio, self.mel_filters)[None]

    # ---- public API ---------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Transcript:
        """Greedy, no timestamps; audio longer than 30 s is cut into consecutive 30 s windows
        (no timestamp-based seeking, so a word on a window edge may be split)."""
        t0 = time.perf_counter()
        audio = resample(check_audio(audio), sr)
        tokens: list[int] = []
        texts: list[str] = []
        encoder_s, language = 0.0, self.options.language or "en"
        chunks = windows(audio)
        for chunk in chunks:
            feats = self.features(chunk)
            t1 = time.perf_counter()
            cross = self.decoder.encode(feats)
            encoder_s += time.perf_counter() - t1
            if self.multilingual and self.options.language == "auto":
                language = self.decoder.detect_language(cross, self.tokens["sot"], self.tokens["languages"])
            trace = self.decoder.greedy(cross, self.prompt(language), self.options.max_new_tokens)
            tokens += [t for t in trace.tokens if t < self.tokens["eot"]]  # text tokens only
            texts.append(self.text.decode(trace.tokens).strip())
        text = " ".join(t for t in texts if t)
        return Transcript(text, tokens, encoder_s, time.perf_counter() - t0, len(chunks), texts,
                          language if self.multilingual else None,
                          {"variant": self.variant})

    def transcribe_file(self, path: str | os.PathLike) -> Transcript:
        """Read a WAV file with the standard library (other formats: decode to numpy yourself)."""
        import wave

        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise BundleError(f"{path}: only 16-bit PCM WAV is read without extra packages")
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            audio = raw.reshape(-1, w.getnchannels()).astype(np.float32).mean(axis=1) / 32768.0
            return self.transcribe(audio, w.getframerate())
