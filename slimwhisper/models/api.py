"""What every model source produces, and the registry that maps a ``--model`` value to a loader.

A source kind is a ``SourceKind`` (a name, a ``detect`` predicate, a ``load`` function and a
``priority``) registered with ``register_source``; ``load_model`` asks each kind in ascending
priority, never in import order. New sources (a hub id, a CTranslate2 folder, a pruned
slimwhisper folder, ...) are one registration, not another ``elif``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimwhisper.errors import UserError

if TYPE_CHECKING:  # heavy imports only for type checkers
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from slimwhisper.spec import ArchSpec


class ModelLoadError(UserError, RuntimeError):
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
    """``priority``: lower is asked first. A kind whose folders also match a more general kind
    must come before it (a pruned slimwhisper folder is also a folder with config.json and
    weights). Built-in: bundled 10, slim 20, transformers 30, ct2 40, openai-pt 50, hub 90."""

    name: str
    detect: Callable[[str], bool]
    load: Callable[[str, LoadOptions], LoadedModel]
    describe: str = ""
    priority: int = 100  # a kind added without one is asked after every built-in kind


_SOURCES: list[SourceKind] = []


def register_source(kind: SourceKind) -> SourceKind:
    for other in _SOURCES:
        if other.name == kind.name:
            raise ValueError(f"source kind {kind.name!r} registered twice")
        if other.priority == kind.priority:  # a tie would fall back to import order
            raise ValueError(f"source kinds {other.name!r} and {kind.name!r} both have priority {kind.priority}")
    _SOURCES.append(kind)
    return kind


def source_kinds() -> list[SourceKind]:
    """The registered kinds in the order ``load_model`` asks them (ascending priority)."""
    return sorted(_SOURCES, key=lambda k: k.priority)
