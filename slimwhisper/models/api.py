"""What every model source produces, and the registry that maps a ``--model`` value to a loader.

A source kind is a ``SourceKind`` (a name, a ``detect`` predicate and a ``load`` function)
registered with ``register_source``; ``load_model`` asks each kind in registration order. New
sources (a hub id, a CTranslate2 folder, a pruned slimwhisper folder, ...) are one registration,
not another ``elif``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports only for type checkers
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from slimwhisper.spec import ArchSpec


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: WhisperForConditionalGeneration  # eval mode, float32, on ``device``
    processor: WhisperProcessor  # feature extractor + tokenizer (with timestamp tokens)
    spec: ArchSpec  # per-layer shapes read off the modules
    name: str  # short name for reports, e.g. "tiny.en" or the folder name
    source: str  # what the user passed to --model
    kind: str  # the SourceKind that loaded it
    multilingual: bool
    path: Path | None = None  # local transformers-format folder the weights were read from
    sha256: str | None = None  # of the source weights, when known
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. pruning record, alignment heads


@dataclass(frozen=True)
class LoadOptions:
    cache_dir: Path | None = None  # None: $SLIMWHISPER_CACHE or $XDG_CACHE_HOME/slimwhisper
    device: str = "cpu"
    attn_implementation: str = "sdpa"


@dataclass(frozen=True)
class SourceKind:
    name: str
    detect: Callable[[str], bool]
    load: Callable[[str, LoadOptions], LoadedModel]
    describe: str = ""


_SOURCES: list[SourceKind] = []


def register_source(kind: SourceKind) -> SourceKind:
    if any(k.name == kind.name for k in _SOURCES):
        raise ValueError(f"source kind {kind.name!r} registered twice")
    _SOURCES.append(kind)
    return kind


def source_kinds() -> list[SourceKind]:
    return list(_SOURCES)
