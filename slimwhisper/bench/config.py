"""The one config of a benchmark run (``slimwhisper bench``), validated when it is made."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from slimwhisper.bench.errors import BenchError
from slimwhisper.outputs import OutputError, check_output


@dataclass(frozen=True)
class BenchConfig:
    """What to measure, on which clips, and how.

    ``targets``: model sources (anything ``slimwhisper.models.load_model`` reads) or bundle
    folders (with ``manifest.json``); the FIRST one is the reference for ratios and agreement.
    ``backends``: registered backend names (``slimwhisper.bench.backends``); empty means the
    default of each target (``torch`` for a model, ``onnx`` for a bundle). Each target runs on
    every listed backend that reads its kind.
    ``timing_limit``: how many of the clips the ``repeat`` timing passes use (None: all).
    ``flops_context``: self-attention context length (cached tokens attended) the per-token
    decoder FLOPs are stated at.
    """

    targets: tuple[str, ...]
    data: str
    out: str
    backends: tuple[str, ...] = ()
    threads: int = 2
    repeat: int = 5
    limit: int | None = None
    timing_limit: int | None = None
    memory: bool = True
    flops_context: int = 32
    force: bool = False
    command: str = ""
    labels: tuple[str, ...] = field(default=())
    batch_size: int = 1  # clips decoded together in the accuracy pass (bench --batch-size)
    fallback: bool = True  # openai-whisper temperature fallback; WER without it is reported too

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        object.__setattr__(self, "backends", tuple(self.backends))
        object.__setattr__(self, "labels", tuple(self.labels))
        problems = self.problems()
        if problems:
            raise BenchError("invalid bench config", problems)

    def problems(self) -> list[str]:
        from slimwhisper.bench.backends import backend_names  # registry lives with the backends

        out = []
        if not self.targets:
            out.append("give at least one model or bundle to benchmark")
        known = backend_names()
        for name in self.backends:
            if name not in known:
                out.append(f"unknown backend {name!r}; choose from {', '.join(known)}")
        for name in ("threads", "repeat", "flops_context", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                out.append(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("limit", "timing_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                out.append(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not Path(self.data).exists():
            out.append(f"dataset {self.data} does not exist (give a folder with transcripts.tsv or a .tsv file)")
        if not self.out:
            out.append("give --out REPORT_DIR")
        else:
            try:
                check_output(self.out, "bench-report", force=self.force, inputs=self.inputs())
            except OutputError as exc:
                out.append(str(exc))
        if self.labels and len(self.labels) != len(self.targets):
            out.append(f"{len(self.labels)} labels for {len(self.targets)} targets; give one per target or none")
        return out

    def inputs(self) -> list[str]:
        """Paths this run reads (a model folder, a bundle, the data): --out may never replace them."""
        return [t.split("@")[0] for t in self.targets] + [self.data]

    def decode(self, fallback: bool | None = None):
        """The decoding every backend uses: openai-whisper's transcribe defaults, fallback as asked."""
        from slimwhisper.transcribe import DecodeConfig

        return DecodeConfig.whisper(fallback=self.fallback if fallback is None else fallback)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
