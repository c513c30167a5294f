"""Model loading: ``load_model(source, options)`` asks each registered ``SourceKind`` in priority order.

Order (``SourceKind.priority``): bundled names, a pruned slimwhisper folder, a transformers
folder, a CTranslate2 folder, an openai ``.pt`` checkpoint, a hub id. The slim kind comes before
the plain transformers folder because a slim folder is also a transformers folder. The kinds are
registered here, explicitly, not as a side effect of importing their modules.
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
from slimwhisper.models.openai_pt import OPENAI_PT_KIND
from slimwhisper.models.slimdir import SLIM_KIND
from slimwhisper.models.sources import KINDS
from slimwhisper.runtime.bundle import FORMAT as BUNDLE_FORMAT
from slimwhisper.runtime.bundle import MANIFEST as BUNDLE_MANIFEST

__all__ = [
    "LoadOptions",
    "LoadedModel",
    "ModelLoadError",
    "SourceKind",
    "load_model",
    "register_source",
    "source_kinds",
]

for _kind in (*KINDS, SLIM_KIND, OPENAI_PT_KIND):
    register_source(_kind)


def load_model(source: str, options: LoadOptions | None = None) -> LoadedModel:
    """Load ``source`` (a bundled name, a folder, a .pt file or a hub id) as a float32 Whisper."""
    options = options or LoadOptions()
    source = str(source)
    if _is_bundle(source):
        raise ModelLoadError(
            f"{source} is an ONNX bundle (made by `slimwhisper export`), not a model; use --bundle {source} "
            "(transcribe, eval) or pass the model it was exported from"
        )
    for kind in source_kinds():
        if kind.detect(source):
            return kind.load(source, options)
    raise ModelLoadError(f"cannot load model: {_no_match(source)}; valid choices:",
                         [f"{k.name}: {k.describe}" for k in source_kinds()])


def _is_bundle(source: str) -> bool:
    import json

    manifest = Path(source) / BUNDLE_MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):  # unreadable or not a JSON object: not a bundle
        return False


def _no_match(source: str) -> str:
    p = Path(source)
    if not p.exists():
        return f"{source!r} is not a known model name and no such file or folder exists"
    if p.is_dir():
        return f"folder {source!r} holds no recognised model (contents: {sorted(x.name for x in p.iterdir())[:12]})"
    return f"file {source!r} is not a recognised model checkpoint"
