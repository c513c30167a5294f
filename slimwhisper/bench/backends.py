"""Backends behind one small interface, registered by name.

A backend turns a ``Target`` into a ``Runner`` whose ``transcribe(audio)`` returns a
``ClipResult`` with the same fields for every library, so every figure is derived the same way
(encoder time = the encoder call(s); the rest of the public transcribe call is decoding).
A new backend is one ``register_backend(BackendKind(...))``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from slimwhisper.bench.errors import BenchError
from slimwhisper.bench.targets import Target, bundle_bytes, folder_bytes
from slimwhisper.errors import UserError


class BackendUnavailable(UserError, RuntimeError):
    """This backend cannot run here (not installed, no GPU, no weights in its format); says why."""


@dataclass(frozen=True)
class ClipResult:
    text: str
    tokens: int  # generated tokens (not counting the prompt)
    encoder_s: float  # time inside the encoder call(s)
    total_s: float  # the whole public transcribe call
    windows: int  # 30 s encoder windows


class Runner(Protocol):
    info: dict[str, Any]  # what the report shows about this runner (providers, compute type, files)

    def transcribe(self, audio: np.ndarray) -> ClipResult: ...


@dataclass(frozen=True)
class BackendKind:
    name: str
    reads: str  # "model" or "bundle"
    open: Callable[[Target, int], Runner]  # (target, threads) -> runner; may raise BackendUnavailable
    modules: tuple[str, ...]  # imported by the memory child before loading ("RSS after imports")
    extra: str | None = None  # pip extra that provides ``modules``
    probe: Callable[[], str | None] = lambda: None  # why it cannot run on this machine, or None
    describe: str = ""


_BACKENDS: dict[str, BackendKind] = {}
ALIASES = {"faster-whisper": "faster-whisper-int8", "ct2": "faster-whisper-int8"}
DEFAULT_BACKEND = {"model": "torch", "bundle": "onnx"}


def register_backend(kind: BackendKind) -> BackendKind:
    if kind.name in _BACKENDS or kind.name in ALIASES:
        raise ValueError(f"backend {kind.name!r} registered twice")
    if kind.reads not in DEFAULT_BACKEND:
        raise ValueError(f"backend {kind.name!r}: reads must be one of {sorted(DEFAULT_BACKEND)}")
    _BACKENDS[kind.name] = kind
    return kind


def backend_names() -> list[str]:
    return sorted(_BACKENDS) + sorted(ALIASES)


def get_backend(name: str) -> BackendKind:
    name = ALIASES.get(name, name)
    if name not in _BACKENDS:
        raise BenchError(f"unknown backend {name!r}; choose from {', '.join(backend_names())}")
    return _BACKENDS[name]


def unavailable_reason(kind: BackendKind) -> str | None:
    """Why ``kind`` cannot run here (missing extra or hardware), before any model is loaded."""
    missing = [m for m in kind.modules if importlib.util.find_spec(m) is None]
    if missing:
        how = f"pip install 'slimwhisper[{kind.extra}]'" if kind.extra else f"install {', '.join(missing)}"
        return f"not available: backend {kind.name!r} needs {', '.join(missing)} ({how})"
    return kind.probe()


def import_modules(kind: BackendKind) -> None:
    for module in kind.modules:
        importlib.import_module(module)


# ---- transformers (torch) ------------------------------------------------------------------
@dataclass
class TranscriberRunner:
    """Wraps a slimwhisper transcriber (torch or bundle) whose result has the shared fields."""

    transcriber: Any
    info: dict[str, Any] = field(default_factory=dict)

    def transcribe(self, audio: np.ndarray) -> ClipResult:
        return _clip_result(self.transcriber.transcribe(audio))

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[ClipResult]:
        """Clips through encoder and decoder together (``bench --batch-size``)."""
        return [_clip_result(t) for t in self.transcriber.transcribe_batch(audios)]

    def with_decoding(self, decode) -> TranscriberRunner:
        """The same loaded model/bundle decoding with ``decode`` (a ``DecodeConfig``)."""
        return TranscriberRunner(self.transcriber.with_config(decode), {**self.info, "decoding": decode.to_dict()})


def _clip_result(t) -> ClipResult:
    tokens = t.tokens if isinstance(t.tokens, int) else len(t.tokens)
    return ClipResult(t.text.strip(), tokens, float(t.encoder_s), float(t.total_s), int(t.windows))


def _torch_runner(target: Target, threads: int, device: str) -> Runner:
    import torch

    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    torch.set_num_threads(threads)
    loaded = target.load(device)
    files = folder_bytes(loaded.path, ("*.safetensors", "*.bin", "*.json"))
    info = {"device": device, "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
            "attn": loaded.model.config._attn_implementation, "threads": torch.get_num_threads(),
            "files_bytes": files, "files": str(loaded.path) if loaded.path else None}
    return TranscriberRunner(TorchTranscriber(loaded, DecodeConfig()), info)


def _probe_torch_cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "not available: torch sees no CUDA device on this machine"


register_backend(BackendKind("torch", "model", lambda t, n: _torch_runner(t, n, "cpu"), ("torch", "transformers"),
                             describe="transformers fp32 on CPU (slimwhisper TorchTranscriber)"))
register_backend(BackendKind("torch-cuda", "model", lambda t, n: _torch_runner(t, n, "cuda"), ("torch", "transformers"),
                             probe=_probe_torch_cuda, describe="transformers fp32 on CUDA"))


# ---- slimwhisper ONNX bundle -----------------------------------------------------------------
def _sessions(obj: Any, depth: int = 2) -> list[Any]:
    """ONNX Runtime sessions held by a transcriber (to check which provider really runs)."""
    import onnxruntime as ort

    found = []
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, ort.InferenceSession):
            found.append(value)
        elif isinstance(value, (list, tuple, dict)):
            items = value.values() if isinstance(value, dict) else value
            found += [v for v in items if isinstance(v, ort.InferenceSession)]
        elif depth > 0 and hasattr(value, "__dict__") and type(value).__module__.startswith("slimwhisper"):
            found += _sessions(value, depth - 1)
    return found


def _bundle_runner(target: Target, threads: int, cuda: bool) -> Runner:
    from slimwhisper.runtime import BundleError, BundleTranscriber, DecodeOptions
    from slimwhisper.runtime.decode import forced_language
    from slimwhisper.transcribe import DecodeConfig

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    decode = DecodeConfig()
    # The torch rule (forced "en" for multilingual models): letting the runtime detect the
    # language would add a step and possible misdetections the other backends do not have.
    multilingual = bool(target.manifest().get("model", {}).get("multilingual"))
    options = DecodeOptions(max_new_tokens=decode.max_new_tokens, task=decode.task,
                            language=forced_language(decode.language, multilingual))
    try:
        tr = BundleTranscriber(target.path, threads=threads, providers=providers, variant=target.variant,
                               options=options)
    except BundleError as exc:
        if cuda and "provider" in str(exc):
            raise BackendUnavailable(f"not available: {exc}") from exc
        raise
    used = sorted({s.get_providers()[0] for s in _sessions(tr)})
    if cuda and used != ["CUDAExecutionProvider"]:
        # onnxruntime silently falls back to CPU when CUDA libraries are missing: never report
        # a CPU figure under a CUDA label.
        raise BackendUnavailable(f"not available: sessions run on {used or 'unknown providers'}, not CUDAExecutionProvider")
    info = {"providers": used, "threads": threads, "files_bytes": bundle_bytes(target), "files": str(target.path),
            "variant": tr.variant, "language": options.language}
    return TranscriberRunner(tr, info)


def probe_ort_cuda() -> str | None:
    """Create a real session on a one-node graph and check which provider it got."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "not available: this onnxruntime build has no CUDAExecutionProvider (needs onnxruntime-gpu and a GPU)"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure to start CUDA means "not available"; say why
        return f"not available: CUDA session failed to start ({exc.__class__.__name__}: {exc})"
    first = sess.get_providers()[0]
    return None if first == "CUDAExecutionProvider" else f"not available: CUDA requested but session runs on {first}"


register_backend(BackendKind("onnx", "bundle", lambda t, n: _bundle_runner(t, n, False), ("numpy", "onnxruntime"),
                             describe="slimwhisper bundle on ONNX Runtime CPU"))
register_backend(BackendKind("onnx-cuda", "bundle", lambda t, n: _bundle_runner(t, n, True), ("numpy", "onnxruntime"),
                             probe=probe_ort_cuda, describe="slimwhisper bundle on ONNX Runtime CUDAExecutionProvider"))


# ---- faster-whisper (CTranslate2), the peer users would otherwise pick ------------------------
@dataclass
class FasterWhisperRunner:
    model: Any
    language: str | None
    info: dict[str, Any] = field(default_factory=dict)
    _enc_s: float = 0.0
    _windows: int = 0

    def __post_init__(self) -> None:
        encode = self.model.encode

        def timed_encode(features, *args, **kwargs):  # the same "encoder call" the other backends time
            t0 = time.perf_counter()
            out = encode(features, *args, **kwargs)
            self._enc_s += time.perf_counter() - t0
            self._windows += 1
            return out

        self.model.encode = timed_encode

    def with_decoding(self, decode) -> FasterWhisperRunner:
        """The same model decoding like ``decode`` (a ``DecodeConfig``): beam, fallback, timestamps."""
        runner = FasterWhisperRunner(self.model, self.language, {**self.info, "decoding": decode.to_dict()})
        # __post_init__ wrapped model.encode once more: every runner of this model counts its calls
        runner.options = {"beam_size": decode.beam, "best_of": decode.best_of, "patience": decode.patience,
                          "temperature": tuple(decode.to_dict()["temperatures"]),
                          "condition_on_previous_text": decode.condition_on_previous_text,
                          "without_timestamps": not decode.timestamps,
                          "no_speech_threshold": 0.6 if decode.no_speech else None}
        return runner

    def transcribe(self, audio: np.ndarray) -> ClipResult:
        self._enc_s, self._windows = 0.0, 0
        t0 = time.perf_counter()
        # Default: greedy, no temperature fallback, no previous-text prompt (``with_decoding`` sets ours).
        options = getattr(self, "options", None) or {
            "beam_size": 1, "best_of": 1, "temperature": 0.0, "condition_on_previous_text": False,
            "without_timestamps": True}
        segments, _ = self.model.transcribe(audio, language=self.language, vad_filter=False, **options)
        segments = list(segments)  # the generator does the work
        total = time.perf_counter() - t0
        text = "".join(s.text for s in segments).strip()
        return ClipResult(text, sum(len(s.tokens) for s in segments), self._enc_s, total, max(self._windows, 1))


def _faster_whisper_runner(target: Target, threads: int, compute_type: str) -> Runner:
    import logging

    from faster_whisper import WhisperModel

    # faster-whisper logs every transcription (language, VAD, ...) at INFO: ~60 lines that bury
    # the report in a CLI run; warnings still show.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)

    from slimwhisper.models.ct2dirs import ct2_folder_for

    folder = ct2_folder_for(target.source, target.path)
    if folder is None:
        raise BackendUnavailable(
            f"not available: faster-whisper needs CTranslate2 weights of the same model; {target.source} has none "
            "(only the bundled names tiny.en/base and CTranslate2 folders do; a pruned model cannot be converted)")
    model = WhisperModel(str(folder), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1)
    from slimwhisper.runtime.decode import forced_language

    language = forced_language(None, model.model.is_multilingual is not False)
    info = {"compute_type": compute_type, "threads": threads, "files": str(folder),
            "files_bytes": folder_bytes(folder), "language": language}
    return FasterWhisperRunner(model, language, info)


for _ct in ("int8", "float32"):
    register_backend(BackendKind(
        f"faster-whisper-{'fp32' if _ct == 'float32' else _ct}", "model",
        (lambda ct: lambda t, n: _faster_whisper_runner(t, n, ct))(_ct), ("ctranslate2", "faster_whisper"),
        extra="peers", describe=f"faster-whisper {_ct} on CPU (CTranslate2)"))
