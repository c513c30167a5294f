"""What the user asked to benchmark: a model source or an exported bundle folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimwhisper.bench.errors import BenchError

BUNDLE_MANIFEST = "manifest.json"


@dataclass
class Target:
    """One model or bundle; a model is loaded once per device and shared by its backends."""

    source: str
    kind: str  # "model" (anything load_model reads) or "bundle" (slimwhisper ONNX bundle folder)
    label: str
    path: Path | None = None
    variant: str | None = None  # bundle variant (e.g. "fp32", "int8"); None: the bundle's default
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def load(self, device: str = "cpu"):
        """The ``LoadedModel`` on ``device`` (loaded on first use, then shared)."""
        if self.kind != "model":
            raise BenchError(f"{self.source} is a bundle, not a model")
        if device not in self._loaded:
            from slimwhisper.models import LoadOptions, load_model

            self._loaded[device] = load_model(self.source, LoadOptions(device=device))
        return self._loaded[device]

    def manifest(self) -> dict[str, Any]:
        assert self.path is not None and self.kind == "bundle"
        return json.loads((self.path / BUNDLE_MANIFEST).read_text())


def _bundle_target(source: str, path: Path, variant: str | None, label: str | None) -> Target:
    manifest = json.loads((path / BUNDLE_MANIFEST).read_text())
    variants = manifest.get("variants") or {}
    variant = variant or manifest.get("default_variant")
    if variants and variant not in variants:
        raise BenchError(f"bundle {path} has no variant {variant!r} (it has {', '.join(sorted(variants))}); "
                         f"write BUNDLE@VARIANT with one of those")
    name = f"{path.name}@{variant}" if variant and not path.name.endswith(variant) else path.name
    return Target(source, "bundle", label or name, path.resolve(), variant)


def resolve_target(source: str, label: str | None = None) -> Target:
    """Decide model vs bundle without loading anything; a path that does not exist is an error.

    ``BUNDLE@VARIANT`` picks one variant of a bundle (e.g. ``out/bundle@int8``).
    """
    path = Path(source).expanduser()
    if path.is_dir() and (path / BUNDLE_MANIFEST).is_file():
        return _bundle_target(source, path, None, label)
    base, _, variant = source.rpartition("@")
    if base and (Path(base).expanduser() / BUNDLE_MANIFEST).is_file():
        return _bundle_target(source, Path(base).expanduser(), variant, label)
    if path.exists():
        return Target(source, "model", label or path.name, path.resolve())
    if os.sep in source or source.startswith(".") or source.endswith((".pt", ".onnx", ".bin")):
        raise BenchError(f"{source} does not exist; give a model name (tiny.en, base, ...), a model folder or a bundle folder")
    return Target(source, "model", label or source, None)


def bundle_bytes(target: Target) -> int | None:
    """Bytes a bundle variant needs on a device: its graphs (and their external data) plus the
    shared files (tokenizer, mel filters, manifest); other variants' graphs are not counted."""
    assert target.path is not None
    manifest = target.manifest()
    variants = manifest.get("variants") or {}
    if not variants:
        return folder_bytes(target.path)
    mine = set(variants.get(target.variant or manifest.get("default_variant"), {}).values())
    others = {f for name, files in variants.items() for f in files.values()} - mine
    total = 0
    for f in target.path.rglob("*"):
        rel = f.relative_to(target.path).as_posix()
        # "encoder.onnx" belongs to fp32, "encoder.onnx.data" is its external data, "encoder.int8.onnx" is not
        if f.is_file() and not any(rel == o or rel.startswith(o + ".") for o in others):
            total += f.stat().st_size
    return total


def folder_bytes(path: Path | None, patterns: tuple[str, ...] = ("*",)) -> int | None:
    """Bytes of the files under ``path`` (recursively) matching ``patterns``; None if unknown."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    seen: set[Path] = set()
    for pattern in patterns:
        seen.update(p for p in path.rglob(pattern) if p.is_file())
    return sum(p.stat().st_size for p in seen)
