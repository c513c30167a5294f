"""Every file and folder a command writes goes through here, so no command can destroy data.

Rules (one place, every command):

* Checked **before any work starts** (``check_output``): an existing target is refused without
  ``--force``; with ``--force`` only a previous output **of the same kind** is replaced (recognised
  by the files only slimwhisper writes: a bundle's ``manifest.json`` format, a slim folder's
  ``slimwhisper.json``, a marker ``.slimwhisper-output.json`` for a ``run`` folder) — never a
  folder of the user's files, never a non-empty folder of another kind, never the input the
  command reads (nor a folder that contains it or lies inside it). An empty folder is used as is.
* Written **atomically** (``output_dir`` / ``write_file``): into a temp sibling, renamed into place
  only when complete, so an interrupted or failed command leaves the previous output (or nothing),
  never half of one. The temp name never reaches the user: an unwritable parent is reported as
  ``cannot write OUT: ...`` with the path the user gave.

Standard library only (the runtime and the bench may use it without torch).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from slimwhisper.errors import UserError

MARKER = ".slimwhisper-output.json"


class OutputError(UserError, ValueError):
    """An output path cannot be written or replaced; the message says what to do instead."""


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder: ``name`` goes in the marker; ``signature`` recognises outputs of
    this kind written before markers existed (e.g. a slim folder's ``slimwhisper.json``)."""

    name: str
    describe: str
    signature: Callable[[Path], bool] = lambda _p: False


OUTPUT_KINDS: dict[str, OutputKind] = {}


def register_output_kind(kind: OutputKind) -> OutputKind:
    OUTPUT_KINDS[kind.name] = kind
    return kind


def _has(*names: str) -> Callable[[Path], bool]:
    return lambda p: all((p / n).is_file() for n in names)


def _json_field(path: Path, key: str):
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


for _kind in (
    OutputKind("model", "a pruned slimwhisper model folder", _has("slimwhisper.json", "model.safetensors")),
    OutputKind("bundle", "an ONNX bundle", lambda p: _json_field(p / "manifest.json", "format") == "slimwhisper-bundle"),
    OutputKind("bench-report", "a benchmark report", _has("report.json", "bench_config.json")),
    OutputKind("run", "a 'slimwhisper run' folder", _has("run_config.json")),
    # Only a set that says it is synthetic: a real data set is never replaced, --force or not.
    OutputKind("dataset", "a synthetic data set",
               lambda p: _has("transcripts.tsv")(p) and _json_field(p / "dataset.json", "synthetic") is True),
):
    register_output_kind(_kind)


def marker_kind(path: Path) -> str | None:
    """The kind recorded in ``path``'s marker (None: no readable marker)."""
    return _json_field(Path(path) / MARKER, "kind")


def is_output_of(path: Path, kind: str) -> bool:
    path = Path(path)
    return path.is_dir() and (marker_kind(path) == kind or OUTPUT_KINDS[kind].signature(path))


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(path: str | Path, kind: str, *, force: bool, inputs: Iterable[str | Path | None] = (),
                 option: str = "--out") -> Path:
    """Refuse, before any work, every target this command must not write; returns the Path."""
    if kind not in OUTPUT_KINDS:
        raise KeyError(f"unregistered output kind {kind!r}")  # a programming error, not bad input
    out = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and _overlaps(out, Path(src)):
            raise OutputError(f"{option} {out} is (or holds, or lies inside) the input {src}; "
                              "write to another folder")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputError(f"{option} {out} already exists; choose a new {option} or pass --force to replace it")
        if not is_output_of(out, kind):
            raise OutputError(f"{option} {out} is not {OUTPUT_KINDS[kind].describe} made by slimwhisper; "
                              "refusing to replace it even with --force (choose an empty or new folder)")  # fmt: skip
    _check_parent(out, option)
    return out


def _check_parent(out: Path, option: str) -> None:
    parent = out.parent
    while not parent.exists():  # mkdir -p will make the rest; check the first existing ancestor
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {option} {out}: {parent} is not a writable folder")


@contextmanager
def output_dir(path: str | Path, kind: str, *, force: bool, inputs: Iterable[str | Path | None] = (),
               option: str = "--out") -> Iterator[Path]:
    """Yield an empty temp folder; on success it replaces ``path``, else it vanishes."""
    out = check_output(path, kind, force=force, inputs=inputs, option=option)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; outputs are meant to be shared
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    if out.exists():  # check_output allowed it: empty, or a previous output of this kind with --force
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def check_output_file(path: str | Path, *, force: bool, option: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """A result file (``eval --json``, ``sensitivity --out``/``--plot``): checked before any work."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{option} {out} is a folder; give a file name such as {out / 'result.json'}")
    for src in inputs:
        if src is not None and Path(src).exists() and out.resolve() == Path(src).resolve():
            raise OutputError(f"{option} {out} is an input of this command; write to another file")
    if out.exists() and not force:
        raise OutputError(f"{option} {out} already exists; choose another file or pass --force to overwrite it")
    if not out.parent.is_dir():
        raise OutputError(f"{option} {out}: folder {out.parent} does not exist (create it first)")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {option} {out}: {out.parent} is not a writable folder")
    return out


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it in (no half-written file)."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def write_json(path: str | Path, obj) -> Path:
    return write_file(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
