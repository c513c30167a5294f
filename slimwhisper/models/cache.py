"""Where converted models live, how to write them without leaving half folders, and hashing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from slimwhisper.models.api import LoadOptions

# Marker written last inside a converted folder: a folder without it is not a finished conversion.
DONE_MARKER = "slimwhisper_source.json"
# Part of every cache folder name: bump it when a converter's output changes, so old caches are not reused.
CONVERTER_VERSION = 1


def converted_dir(options: LoadOptions | None, kind: str, sha256: str) -> Path:
    """The cache folder for the conversion of weights with this hash."""
    return cache_root(options) / f"{kind}-{sha256[:16]}-v{CONVERTER_VERSION}"


def cache_root(options: LoadOptions | None = None) -> Path:
    """``options.cache_dir``, else $SLIMWHISPER_CACHE, else $XDG_CACHE_HOME/slimwhisper, else ~/.cache/slimwhisper."""
    if options is not None and options.cache_dir is not None:
        return Path(options.cache_dir).expanduser()
    if os.environ.get("SLIMWHISPER_CACHE"):
        return Path(os.environ["SLIMWHISPER_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "slimwhisper"
    return Path.home() / ".cache" / "slimwhisper"


def sha256_of(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def file_chunks(paths: Iterable[Path], size: int = 1 << 22) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(size):
                yield chunk


STALE_TEMP_S = 3600  # a temp folder untouched this long belongs to a killed conversion


def _remove_stale_temps(final: Path) -> None:
    for old in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            continue


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; rename it to ``final`` only if the block succeeds.

    A killed or failing conversion leaves at most a hidden ``.tmp-*`` folder (never a half
    ``final``). If another process finished ``final`` first, ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished cache entry is readable like any file
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / DONE_MARKER).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
