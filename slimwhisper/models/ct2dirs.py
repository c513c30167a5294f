"""CTranslate2 folders of the same weights (model-cache code; the faster-whisper peer backend uses it).

The bundled weight packages (``slimwhisper.models.bundled.BUNDLED``) are CTranslate2
conversions: tiny.en is one folder; base is split over two packages and joined once into the
cache (sha256-verified against the published hash), next to its config and tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


_AUX = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


def is_ct2_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()


def bundled_ct2_folder(name: str, cache: Path | None = None) -> Path | None:
    """The CTranslate2 folder of a bundled model name (joining split parts into the cache)."""
    from slimwhisper.models.bundled import BUNDLED
    from slimwhisper.models.cache import DONE_MARKER, atomic_dir, cache_root

    bundled = BUNDLED.get(name)
    if bundled is None:
        return None
    parts = bundled.part_paths()
    if len(parts) == 1 and parts[0].name == "model.bin" and is_ct2_folder(parts[0].parent):
        return parts[0].parent
    final = (cache or cache_root()) / "ct2" / name
    if (final / DONE_MARKER).exists():
        return final
    digest = bundled.verify()
    with atomic_dir(final) as tmp:
        with open(tmp / "model.bin", "wb") as out:
            for piece in parts:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        for aux in _AUX:
            if (bundled.files_dir() / aux).is_file():
                shutil.copy2(bundled.files_dir() / aux, tmp / aux)
        (tmp / DONE_MARKER).write_text(json.dumps({"joined_from": [str(p) for p in parts], "sha256": digest}) + "\n")
    return final


def ct2_folder_for(source: str, path: Path | None) -> Path | None:
    """CTranslate2 weights of exactly this model (a folder ``path`` or a bundled name ``source``),
    or None (a pruned or foreign model has none)."""
    if path is not None:
        return path if is_ct2_folder(path) else None
    return bundled_ct2_folder(source)
