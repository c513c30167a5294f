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

from slimwhisper.data import Dataset, load_dataset
from slimwhisper.progress import progress_bar
from slimwhisper.text import Scores, score
from slimwhisper.transcribe import DecodeConfig, Transcriber, make_transcriber

RESULT_VERSION = 1


class EvalError(ValueError):
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

    def __post_init__(self) -> None:
        problems = []
        if (self.model is None) == (self.bundle is None):
            problems.append("give exactly one of model (--model) or bundle (--bundle)")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            problems.append(f"limit must be an integer >= 1, got {self.limit!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            problems.append(f"threads must be an integer >= 1, got {self.threads!r}")
        if not isinstance(self.decode, DecodeConfig):
            problems.append("decode must be a DecodeConfig")
        if problems:
            raise EvalError("invalid EvalConfig: " + "; ".join(problems))

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
            "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "utterances": [vars(u) for u in self.utterances],
        }


def evaluate(
    transcriber: Transcriber, dataset: Dataset, config: EvalConfig | None = None, progress: bool = True
) -> EvalResult:
    """Transcribe every utterance that has a reference and score the lot."""
    if not dataset.has_references:
        raise EvalError(f"{dataset.name} has no reference texts (calibration audio?); eval needs a labelled set")
    start = time.perf_counter()
    results: list[UtteranceResult] = []
    unscored = 0
    with progress_bar(len(dataset), f"eval {transcriber.name}", enabled=progress) as bar:
        for item in dataset.items:
            if item.text is None:
                unscored += 1
                bar.advance()
                continue
            utt = dataset.read(item)
            if utt is not None:
                out = transcriber.transcribe(utt.audio)
                results.append(
                    UtteranceResult(
                        utt.id, item.text, out.text, utt.seconds, out.total_s, out.encoder_s, len(out.tokens), out.windows
                    )
                )
            bar.advance()
    if not results:
        raise EvalError(f"{dataset.name}: no utterance could be evaluated ({dataset.skipped} skipped)")
    scores = score([r.ref for r in results], [r.hyp for r in results])
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
    )


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
