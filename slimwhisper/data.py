"""Speech datasets: a manifest of (id, audio path, reference text) read lazily as 16 kHz mono float32.

``load_dataset(path)`` asks each registered ``DataFormat`` (a ``detect`` predicate and a ``list``
function) in order; a new layout is one ``register_format`` call. Listing reads only the text
files and checks that every audio file exists, so errors come early and name the file and line;
decoding audio happens while iterating. With ``skip_bad=True`` bad lines and unreadable audio
are skipped and counted in ``Dataset.skipped`` instead of raising.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimwhisper.audio import SAMPLE_RATE, AudioError, read_audio
from slimwhisper.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_NAME = "transcripts.tsv"
META_NAME = "dataset.json"  # optional: {"synthetic": true, "description": ...}


class DataError(UserError, ValueError):
    """Bad dataset input; the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class Item:
    """One listed utterance before its audio is read; ``where`` is ``file:line`` for messages."""

    id: str
    path: Path
    text: str | None
    where: str


@dataclass
class Utterance:
    id: str
    audio: np.ndarray  # float32, 16 kHz, mono
    text: str | None  # None: no reference (calibration audio)
    path: Path
    seconds: float


@dataclass
class Problems:
    """Collects bad items: raises on the first one unless skipping, then only counts."""

    skip: bool
    messages: list[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        if not self.skip:
            raise DataError(f"{message} (pass --skip-bad / skip_bad=True to skip bad items)")
        log.debug("skipping: %s", message)
        self.messages.append(message)


@dataclass
class Dataset:
    """Sized iterable of ``Utterance``; audio is decoded on iteration."""

    name: str
    root: Path
    format: str
    items: list[Item]
    problems: Problems
    meta: dict = field(default_factory=dict)
    _warned: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped(self) -> int:
        return len(self.problems.messages)

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False))

    @property
    def label(self) -> str:
        """Name for reports; synthetic sets say so wherever their figures appear."""
        return f"{self.name} (synthetic)" if self.synthetic else self.name

    @property
    def has_references(self) -> bool:
        return any(item.text is not None for item in self.items)

    def __iter__(self) -> Iterator[Utterance]:
        for item in self.items:
            utt = self.read(item)
            if utt is not None:
                yield utt

    def read(self, item: Item) -> Utterance | None:
        """Decode one item; None when it is bad and the dataset skips bad items."""
        try:
            audio, info = read_audio(item.path)
        except AudioError as exc:
            self.problems.bad(f"{item.where}: {exc}")
            return None
        if info.converted and not self._warned:
            # Said once per dataset: converting is correct but costs time and may hide a mix-up.
            log.warning("%s: converting audio (%s, first seen in %s)", self.name, info.describe(), item.path.name)
            self._warned = True
        return Utterance(item.id, audio, item.text, item.path, audio.size / SAMPLE_RATE)


@dataclass(frozen=True)
class DataFormat:
    name: str
    detect: Callable[[Path], bool]
    list: Callable[[Path, Problems], list[Item]]
    describe: str = ""


_FORMATS: list[DataFormat] = []


def register_format(fmt: DataFormat) -> DataFormat:
    if any(f.name == fmt.name for f in _FORMATS):
        raise ValueError(f"data format {fmt.name!r} registered twice")
    _FORMATS.append(fmt)
    return fmt


def data_formats() -> list[DataFormat]:
    return list(_FORMATS)


def load_dataset(path: Path | str, limit: int | None = None, skip_bad: bool = False) -> Dataset:
    """List the dataset at ``path`` (manifest file or folder); ``limit`` keeps the first N items."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no dataset at {path}: pass a transcripts .tsv or a folder holding one")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    fmt = next((f for f in _FORMATS if f.detect(path)), None)
    if fmt is None:
        known = "; ".join(f"{f.name}: {f.describe}" for f in _FORMATS)
        raise DataError(f"{path}: not a dataset layout slimwhisper reads ({known})")
    problems = Problems(skip=skip_bad)
    items = fmt.list(path, problems)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise DataError(f"{path}: no usable utterances found ({fmt.name} layout)")
    root = path if path.is_dir() else path.parent
    name = root.name if path.is_dir() or path.name == MANIFEST_NAME else f"{root.name}/{path.stem}"
    return Dataset(name=name, root=root, format=fmt.name, items=items, problems=problems, meta=_read_meta(root))


# ---- evaluation sets: never trained or calibrated on (the workplace's rule) ------------------------

EVAL_SETS = ("ljspeech/dev.tsv", "librispeech-clean-mini", "speechocean762/eval.tsv", "misc-real")


def _eval_root(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if any((parent / e).exists() for e in EVAL_SETS):
            return parent
    return None


def evaluation_sets(paths: Sequence[str | Path]) -> set[Path]:
    """The evaluation sets (resolved) next to any of ``paths``."""
    roots = {r for r in (_eval_root(Path(p).resolve()) for p in paths) if r is not None}
    return {(root / rel).resolve() for root in roots for rel in EVAL_SETS if (root / rel).exists()}


def evaluation_audio(paths: Sequence[str | Path]) -> tuple[set[Path], set[Path]]:
    """(evaluation set paths, their audio files) near any of ``paths``."""
    sets, audio = evaluation_sets(paths), set()
    for p in sets:
        try:
            audio |= {item.path.resolve() for item in load_dataset(p, skip_bad=True).items}
        except DataError:
            continue
    return sets, audio


def evaluation_problems(paths: Sequence[str | Path], eval_sets: set[Path] | None = None, use: str = "train") -> list[str]:
    """One line for each of ``paths`` that is (or lies inside) an evaluation set: never ``use`` on it."""
    eval_sets = evaluation_sets(paths) if eval_sets is None else eval_sets
    out = []
    for p in paths:
        r = Path(p).resolve()
        if r in eval_sets or any(r.is_relative_to(s) for s in eval_sets if s.is_dir()):
            out.append(f"{p} is an evaluation set: never {use} on it (use ljspeech/train.tsv, "
                       "librispeech-train-unlabeled, asterisk-prompts, speechocean762/train.tsv)")  # fmt: skip
    return out


def select_utterances(paths: Sequence[str | Path], n: int, seed: int, log: Callable[[str], None] = print, *,
                      error: type[UserError] = DataError, use: str = "train", what: str = "training") -> list[Utterance]:
    """``n`` utterances (all when fewer) drawn with ``seed`` from the union of ``paths``; sorted by id.

    Training and calibration data alike: an evaluation set is refused (by path), and the lines of a
    hand-made manifest that point at evaluation audio are left out with a message. ``error`` is the
    ``UserError`` subclass raised; ``use`` / ``what`` the verb and the noun of
    the messages ("train" / "training", "calibrate" / "calibration").
    """
    from slimwhisper.errors import raise_problems

    eval_sets, _ = evaluation_audio(paths)
    problems, items, loaded = [], [], []
    for p in paths:
        if not Path(p).exists():
            problems.append(f"{what} data {p} does not exist")
        elif found := evaluation_problems([p], eval_sets, use):
            problems += found
        else:
            try:
                loaded.append((p, load_dataset(p)))
            except DataError as exc:
                problems.append(f"{what} data {p}: {exc}")
    raise_problems(error, f"unusable {what} data", problems)
    # evaluation sets next to the data AND next to its audio files (a manifest may point anywhere)
    _, eval_audio = evaluation_audio([*paths, *{it.path.parent for _, ds in loaded for it in ds.items}])
    for p, ds in loaded:
        kept = [it for it in ds.items if it.path.resolve() not in eval_audio]
        if len(kept) < len(ds.items):
            log(f"{what} data {p}: {len(ds.items) - len(kept)} utterances are evaluation audio: left out")
        items += [(ds, it) for it in kept]
    if not items:
        raise error(f"{what} data {', '.join(map(str, paths))} holds no utterance outside the evaluation sets")
    if len(items) > n:
        items = random.Random(seed).sample(items, n)
    items.sort(key=lambda x: (str(x[0].root), x[1].id))
    utts = [u for u in (ds.read(it) for ds, it in items) if u is not None]
    if not utts:
        raise error(f"no {what} utterance could be read from {', '.join(map(str, paths))}")
    return utts


def _read_meta(root: Path) -> dict:
    meta_path = root / META_NAME
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    return meta


def _read_lines(path: Path, problems: Problems) -> Iterator[tuple[str, str]]:
    """``(where, line)`` for each non-blank line, ``where`` being ``file:line``.

    Decoded line by line so that a stray non-UTF-8 byte names its line and ``--skip-bad`` can
    skip just that line. A UTF-8 byte-order mark (Windows editors write one) is dropped.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    for lineno, chunk in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.bad(f"{where}: not UTF-8 text (byte {chunk[exc.start]:#04x} at column {exc.start + 1}); "
                         "save the file as UTF-8")
            continue
        if line.strip():  # blank lines (e.g. a trailing newline) carry nothing
            yield where, line


def _check_audio(item: Item, problems: Problems, *, first_line: str | None = None) -> Item | None:
    """The item if its audio file exists; otherwise report it (``first_line``: the raw line 1 of
    a manifest, which is most likely a header row when its path is not a file)."""
    if item.path.is_file():
        return item
    if item.path.is_dir():
        problems.bad(f"{item.where}: audio path {item.path} is a folder, not an audio file")
    elif first_line is not None and _looks_like_header(item.path):
        problems.bad(f"{item.where}: line 1 looks like a header ({first_line[:60]!r}); remove it "
                     "(manifests have no header row)")
    else:
        problems.bad(f"{item.where}: audio file {item.path} does not exist")
    return None


def _looks_like_header(path: Path) -> bool:
    # A column name ("path", "audio_path", "audio file") has no extension; a real audio path does.
    return re.fullmatch(r"[A-Za-z][A-Za-z _-]*", path.name) is not None


# ---- TSV manifest: id<TAB>relative path<TAB>text (empty text = no reference) -------------------


def _list_tsv(manifest: Path, problems: Problems) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, str] = {}
    for where, line in _read_lines(manifest, problems):
        fields = line.split("\t")
        if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
            problems.bad(f"{where}: expected 'id<TAB>audio path<TAB>text', got {line[:80]!r}")
            continue
        uid, rel = fields[0].strip(), fields[1].strip()
        if uid in seen:
            problems.bad(f"{where}: duplicate id {uid!r} (first at {seen[uid]})")
            continue
        seen[uid] = where
        text = fields[2].strip() if len(fields) == 3 and fields[2].strip() else None
        first = line if where == f"{manifest}:1" else None
        item = _check_audio(Item(uid, manifest.parent / rel, text, where), problems, first_line=first)
        if item is not None:
            items.append(item)
    return items


def _list_tsv_folder(folder: Path, problems: Problems) -> list[Item]:
    return _list_tsv(folder / MANIFEST_NAME, problems)


# ---- LibriSpeech: <speaker>/<chapter>/<spk>-<ch>.trans.txt with "ID TEXT" lines + ID.flac --------


def _list_librispeech(folder: Path, problems: Problems) -> list[Item]:
    items: list[Item] = []
    for trans in sorted(folder.rglob("*.trans.txt")):
        for where, line in _read_lines(trans, problems):
            uid, _, text = line.strip().partition(" ")
            if not text.strip():
                problems.bad(f"{where}: expected 'ID TEXT', got {line[:80]!r}")
                continue
            item = _check_audio(Item(uid, trans.parent / f"{uid}.flac", text.strip(), where), problems)
            if item is not None:
                items.append(item)
    return items


# ---- LJSpeech: metadata.csv "id|text|normalized text" + wavs/<id>.wav ------------------------------


def _list_ljspeech(folder: Path, problems: Problems) -> list[Item]:
    items: list[Item] = []
    meta = folder / "metadata.csv"
    for where, line in _read_lines(meta, problems):
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip() or not any(f.strip() for f in fields[1:]):
            problems.bad(f"{where}: expected 'id|text|normalized text', got {line[:80]!r}")
            continue
        # The raw column (numerals, punctuation) is what Whisper writes; the Whisper normaliser
        # then treats both sides alike. The "normalized" column spells numbers out, which the
        # normaliser would not undo reliably, so it is only a fallback.
        text = fields[1] if fields[1].strip() else fields[-1]
        uid = fields[0].strip()
        item = _check_audio(Item(uid, folder / "wavs" / f"{uid}.wav", text.strip(), where), problems)
        if item is not None:
            items.append(item)
    return items


register_format(
    DataFormat("tsv", lambda p: p.is_file(), _list_tsv, "a file with id<TAB>path<TAB>text lines")
)
register_format(
    DataFormat(
        "tsv-folder", lambda p: (p / MANIFEST_NAME).is_file(), _list_tsv_folder, f"a folder with {MANIFEST_NAME}"
    )
)
register_format(
    DataFormat(
        "ljspeech",
        lambda p: (p / "metadata.csv").is_file() and (p / "wavs").is_dir(),
        _list_ljspeech,
        "a folder with metadata.csv and wavs/",
    )
)
register_format(
    DataFormat(
        "librispeech",
        lambda p: p.is_dir() and next(p.rglob("*.trans.txt"), None) is not None,
        _list_librispeech,
        "a folder tree with *.trans.txt and .flac files",
    )
)
