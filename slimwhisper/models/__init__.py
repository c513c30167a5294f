"""Model loading: ``load_model(source, options)`` asks each registered ``SourceKind`` in order.

Order: bundled names, a pruned slimwhisper folder (``slimdir``, when present), a transformers
folder, a CTranslate2 folder, an openai ``.pt`` checkpoint, a hub id. The slim kind must come
before the plain transformers folder because a slim folder is also a transformers folder.
"""

from __future__ import annotations

from pathlib import Path

from slimwhisper.models.api import (
    LoadedModel,
    LoadOptions,
    ModelLoadError,
    SourceKind,
    register_source,
    source_kinds,
)
from slimwhisper.models.sources import BUNDLED_KIND, LATER_KINDS

__all__ = [
    "LoadedModel",
    "LoadOptions",
    "ModelLoadError",
    "SourceKind",
    "load_model",
    "register_source",
    "source_kinds",
]

register_source(BUNDLED_KIND)
try:
    import slimwhisper.models.slimdir  # noqa: F401  (registers the "slim" kind at import)
except ModuleNotFoundError as exc:
    if exc.name != "slimwhisper.models.slimdir":
        raise
for _kind in LATER_KINDS:
    register_source(_kind)


def load_model(source: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load ``source`` (a bundled name, a folder, a .pt file or a hub id) as a float32 Whisper."""
    options = options or LoadOptions()
    source = str(source)
    for kind in source_kinds():
        if kind.detect(source):
            return kind.load(source, options)
    raise ModelLoadError(_no_match(source))


def _no_match(source: str) -> str:
    p = Path(source)
    if not p.exists():
        why = f"{source!r} is not a known model name and no such file or folder exists"
    elif p.is_dir():
        why = f"folder {source!r} holds no recognised model (contents: {sorted(x.name for x in p.iterdir())[:12]})"
    else:
        why = f"file {source!r} is not a recognised model checkpoint"
    valid = "\n  - ".join(f"{k.name}: {k.describe}" for k in source_kinds())
    return f"cannot load model: {why}. Valid choices:\n  - {valid}"
