"""Evaluate a transcriber on a dataset: corpus WER/CER plus per-utterance text and timing.

``EvalConfig`` says what to evaluate (a ``--model`` source or a ``--bundle`` folder, the data,
decoding); ``run_eval(config)`` builds both and calls ``evaluate``. ``evaluate`` takes an
already-built transcriber so benches can reuse one loaded model across datasets.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slimwhisper.audio import AudioError
from slimwhisper.data import Dataset, load_dataset
from slimwhisper.errors import UserError, check_positive_int, raise_problems
from slimwhisper.progress import progress_bar
from slimwhisper.text import Scores, score
from slimwhisper.transcribe import (
    DecodeConfig,
    TorchTranscriber,
    Transcriber,
    decoding_label,
    make_transcriber,
)

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

RESULT_VERSION = 1


class EvalError(UserError, ValueError):
    """The evaluation cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class EvalConfig:
    data: Path
    model: str | None = None  # a load_model source: "tiny.en", "base", a folder, ...
    bundle: Path | None = None  # an exported ONNX bundle folder instead of a model
    limit: int | None = None
    skip_bad: bool = False
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    threads: int | None = None
    batch_size: int = 1  # clips of <= 30 s through encoder and decoder together

    def __post_init__(self) -> None:
        problems = []
        check_positive_int(problems, "--batch-size", self.batch_size)
        if (self.model is None) == (self.bundle is None):
            problems.append("give exactly one of model (--model) or bundle (--bundle)")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            problems.append(f"limit must be an integer >= 1, got {self.limit!r}")
        check_positive_int(problems, "--threads", self.threads, allow_none=True)
        if not isinstance(self.decode, DecodeConfig):
            problems.append("decode must be a DecodeConfig")
        raise_problems(EvalError, "invalid evaluation settings", problems)

    @property
    def backend(self) -> str:
        return "torch" if self.model is not None else "bundle"

    @property
    def source(self) -> str:
        return str(self.model if self.model is not None else self.bundle)

    def to_dict(self) -> dict:
        return {
            "data": str(self.data),
            "model": self.model,
            "bundle": None if self.bundle is None else str(self.bundle),
            "limit": self.limit,
            "skip_bad": self.skip_bad,
            "decode": self.decode.to_dict(),
            "threads": self.threads,
            "batch_size": self.batch_size,
        }


@dataclass
class UtteranceResult:
    id: str
    ref: str
    hyp: str
    seconds: float
    total_s: float
    encoder_s: float
    tokens: int
    windows: int
    fallbacks: int = 0  # windows decoded again at a higher temperature
    silent_windows: int = 0  # windows the no-speech rule skipped


@dataclass
class EvalResult:
    model: str
    data: str
    synthetic: bool
    scores: Scores
    skipped: int
    unscored: int  # utterances without a reference (not transcribed)
    utterances: list[UtteranceResult]
    config: EvalConfig | None
    wall_s: float
    skipped_reasons: list[str] = field(default_factory=list)
    decoding: dict | None = None  # which decoding produced these figures (DecodeConfig.to_dict)

    @property
    def n(self) -> int:
        return len(self.utterances)

    @property
    def wer(self) -> float:
        return self.scores.wer

    @property
    def cer(self) -> float:
        return self.scores.cer

    def timing(self) -> dict:
        audio_s = sum(u.seconds for u in self.utterances)
        total_s = sum(u.total_s for u in self.utterances)
        encoder_s = sum(u.encoder_s for u in self.utterances)
        tokens = sum(u.tokens for u in self.utterances)
        # Decoder steps = text tokens + one EOS per window; this is what "ms per token" divides by.
        steps = tokens + sum(u.windows for u in self.utterances)
        return {
            "audio_s": audio_s,
            "transcribe_s": total_s,
            "encoder_s": encoder_s,
            "decoder_s": total_s - encoder_s,
            "decoder_ms_per_token": 1000 * (total_s - encoder_s) / steps if steps else None,
            "rtf": total_s / audio_s if audio_s else None,
            "wall_s": self.wall_s,
        }

    def summary(self) -> str:
        label = f"{self.data} (synthetic)" if self.synthetic and "synthetic" not in self.data else self.data
        s = self.scores
        line = f"{self.model} on {label}: WER {100 * s.wer:.2f}%  CER {100 * s.cer:.2f}%  ({self.n} utterances, {s.n_words} words"
        extras = [f"{self.skipped} skipped"] if self.skipped else []
        extras += [f"{self.unscored} without reference"] if self.unscored else []
        extras += [decoding_label(self.decoding)] if self.decoding else []
        return line + "".join(f", {e}" for e in extras) + ")"

    def to_json(self) -> dict:
        return {
            "version": RESULT_VERSION,
            "model": self.model,
            "data": self.data,
            "synthetic": self.synthetic,
            "n": self.n,
            "wer": self.scores.wer,
            "cer": self.scores.cer,
            "skipped": self.skipped,
            "skipped_reasons": self.skipped_reasons,
            "unscored": self.unscored,
            "scores": self.scores.to_dict(),
            "timing": self.timing(),
            "config": None if self.config is None else self.config.to_dict(),
            "decoding": self.decoding,
            "fallbacks": sum(u.fallbacks for u in self.utterances),
            "silent_windows": sum(u.silent_windows for u in self.utterances),
            "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "utterances": [vars(u) for u in self.utterances],
        }


def evaluate(
    transcriber: Transcriber, dataset: Dataset, config: EvalConfig | None = None, progress: bool = True,
    batch_size: int | None = None,
) -> EvalResult:
    """Transcribe every utterance that has a reference and score the lot; with ``batch_size`` > 1
    (default: ``config.batch_size``) clips go through the transcriber's ``transcribe_batch``."""
    if not dataset.has_references:
        raise EvalError(f"{dataset.name} has no reference texts (calibration audio?); eval needs a labelled set")
    batch_size = batch_size or (config.batch_size if config is not None else 1)
    start = time.perf_counter()
    results: list[UtteranceResult] = []
    unscored = 0
    pending: list = []
    with progress_bar(len(dataset), f"eval {transcriber.name}", enabled=progress) as bar:
        for item in dataset.items:
            if item.text is None:
                unscored += 1
                bar.advance()
                continue
            utt = dataset.read(item)
            if utt is None:
                bar.advance()
                continue
            pending.append((item, utt))
            if len(pending) >= batch_size:
                results += _run_pending(transcriber, pending, dataset, bar)
        results += _run_pending(transcriber, pending, dataset, bar)
    if not results:
        raise EvalError(f"{dataset.name}: no utterance could be evaluated ({dataset.skipped} skipped)")
    scores = score([r.ref for r in results], [r.hyp for r in results])
    decode = config.decode if config is not None else getattr(transcriber, "config", None)
    return EvalResult(
        model=transcriber.name,
        data=dataset.label,
        synthetic=dataset.synthetic,
        scores=scores,
        skipped=dataset.skipped,
        unscored=unscored,
        utterances=results,
        config=config,
        wall_s=time.perf_counter() - start,
        skipped_reasons=list(dataset.problems.messages),
        decoding=decode.to_dict() if isinstance(decode, DecodeConfig) else None,
    )


def _run_pending(transcriber: Transcriber, pending: list, dataset: Dataset, bar) -> list[UtteranceResult]:
    """Transcribe the queued (item, utterance) pairs, as one batch when there are several."""
    outs = None
    if len(pending) > 1 and hasattr(transcriber, "transcribe_batch"):
        try:
            outs = transcriber.transcribe_batch([u.audio for _, u in pending])
        except AudioError:
            outs = None  # one clip is refused: transcribe one by one to name it
    if outs is None:
        outs = [_transcribe(transcriber, u, dataset, item.where) for item, u in pending]
    results = []
    for (item, utt), out in zip(pending, outs):
        if out is not None:
            extra = getattr(out, "extra", {}) or {}
            results.append(UtteranceResult(utt.id, item.text, out.text, utt.seconds, out.total_s, out.encoder_s,
                                           len(out.tokens), out.windows, int(extra.get("fallbacks", 0)),
                                           int(extra.get("silent_windows", 0))))
        bar.advance()
    pending.clear()
    return results


def _transcribe(transcriber: Transcriber, utt, dataset: Dataset, where: str):
    """The transcript, or None when the backend refuses the audio and the dataset skips bad items.

    Reading already refuses NaN/Inf samples; this is the same rule for any other audio a backend
    refuses (the runtime's ``check_audio``), so it fails with file:line or is skipped and counted.
    """
    try:
        return transcriber.transcribe(utt.audio)
    except AudioError as exc:
        dataset.problems.bad(f"{where}: {utt.path}: {exc}")
        return None


def wer_of(loaded: LoadedModel, data: str | Path, *, limit: int | None = None, progress: bool = False,
           decode: DecodeConfig | None = None) -> float:
    """Corpus WER of an already loaded (e.g. just pruned or trained) model on ``data``, greedy by
    default: the one place prune/recover/tspar/run measure "how good is this model now"."""
    dataset = load_dataset(data, limit=limit)
    return evaluate(TorchTranscriber(loaded, decode or DecodeConfig()), dataset, progress=progress).wer


def run_eval(config: EvalConfig, progress: bool = True) -> EvalResult:
    """Load the data first (cheap, fails fast on bad input), then the model, then evaluate."""
    dataset = load_dataset(config.data, limit=config.limit, skip_bad=config.skip_bad)
    if not dataset.has_references:
        raise EvalError(f"{config.data} has no reference texts (calibration audio?); eval needs a labelled set")
    transcriber = make_transcriber(config.backend, config.source, config.decode, config.threads)
    return evaluate(transcriber, dataset, config, progress=progress)


def write_json_atomic(obj: dict, path: Path) -> None:
    """Write JSON to a temp file beside ``path`` and rename it in, so no half-written file remains."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EvalError(f"cannot write {path}: folder {path.parent} does not exist (create it first)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
