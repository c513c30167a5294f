"""The kept-token id map of a vocabulary-pruned model (issue 12), torch-free.

A vocabulary-pruned model's embedding / output projection holds only the rows of ``kept`` (original
Whisper ids, ascending). The model's id ``i`` is original id ``kept[i]``. Because the order is
kept, runs of consecutive original ids (the timestamp tokens after ``<|notimestamps|>``, the special
tokens after ``<|endoftext|>``) stay consecutive, so ``timestamp_begin + i`` and "every text token
is below ``eot``" still hold in the model's ids once the base ids are mapped.

The engine decodes in the model's ids; ids are mapped back (``to_orig``) before detokenising and
in every returned transcript, so callers only ever see original ids and text. Used by the bundle
runtime, the torch path and the slim folder alike; stdlib + numpy only (ships to devices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slimwhisper.errors import UserError

VOCAB_MAP_FILE = "vocab_map.json"
VOCAB_MAP_FORMAT = 1


# Token-id attributes of transformers' GenerationConfig / WhisperConfig (transformers 5.23).
LIST_FIELDS = ("suppress_tokens", "begin_suppress_tokens")  # removed ids need no suppressing: dropped
ID_FIELDS = ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "no_timestamps_token_id",
             "prev_sot_token_id", "forced_bos_token_id", "forced_eos_token_id", *LIST_FIELDS)


class VocabMapError(UserError, ValueError):
    """An id map is malformed or disagrees with the tokenizer / weights it travels with."""


@dataclass(frozen=True)
class VocabMap:
    """``kept[new_id] = original_id``; ``source_vocab`` is the dense vocabulary size."""

    kept: tuple[int, ...]
    source_vocab: int
    language: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kept", tuple(int(i) for i in self.kept))
        problems = []
        if not isinstance(self.source_vocab, int) or self.source_vocab < 1:
            problems.append(f"source_vocab must be a positive int, got {self.source_vocab!r}")
        if not self.kept:
            problems.append("the id map keeps no token")
        elif any(b <= a for a, b in zip(self.kept, self.kept[1:])):
            problems.append("kept ids must be strictly ascending (original order)")
        elif self.kept[0] < 0 or (isinstance(self.source_vocab, int) and self.kept[-1] >= self.source_vocab):
            problems.append(f"kept ids must lie in 0..{self.source_vocab - 1}, got {self.kept[0]}..{self.kept[-1]}")
        if problems:
            raise VocabMapError(f"invalid vocabulary id map: {'; '.join(problems)}; re-run `slimwhisper prune --vocab`")
        orig = np.asarray(self.kept, dtype=np.int64)
        new = np.full(self.source_vocab, -1, dtype=np.int64)
        new[orig] = np.arange(orig.size)
        object.__setattr__(self, "_orig", orig)
        object.__setattr__(self, "_new", new)

    @property
    def size(self) -> int:
        return len(self.kept)

    # ---- id translation -----------------------------------------------------------------------
    def to_orig(self, ids) -> list[int]:
        """Model ids -> original ids (the ids a caller and the tokenizer see)."""
        ids = list(ids)
        return [int(i) for i in self._orig[np.asarray(ids, dtype=np.int64)]] if ids else []

    def to_new(self, ids) -> list[int]:
        """Original ids -> model ids; an id that was not kept is an error (it cannot be fed)."""
        ids = list(ids)
        out = [int(self._new[int(i)]) if 0 <= int(i) < self.source_vocab else -1 for i in ids]
        gone = [int(i) for i, j in zip(ids, out) if j < 0]
        if gone:
            raise VocabMapError(f"token ids {gone[:8]} were removed by vocabulary pruning; use the unpruned model")
        return out

    def one(self, i: int | None) -> int | None:
        return None if i is None else self.to_new([i])[0]

    def kept_only(self, ids) -> list[int]:
        """Original ids that survive, as model ids (a suppress list: removed ids need no suppressing)."""
        return [int(self._new[int(i)]) for i in ids if 0 <= int(i) < self.source_vocab and self._new[int(i)] >= 0]

    def specials(self, sp):
        """``runtime.engine.Specials`` in original ids -> the same in model ids (duck-typed: no import)."""
        return replace(sp, sot=self.one(sp.sot), eot=self.one(sp.eot), no_timestamps=self.one(sp.no_timestamps),
                       timestamp_begin=self.one(sp.timestamp_begin), sot_prev=self.one(sp.sot_prev),
                       no_speech=self.one(sp.no_speech), suppress=tuple(self.kept_only(sp.suppress)),
                       begin_suppress=tuple(self.kept_only(sp.begin_suppress)),
                       specials=tuple(self.kept_only(sp.specials)))

    def longform(self, long):
        """A ``runtime.longform.LongForm`` decoded in model ids, with its tokens mapped back."""
        long.tokens = self.to_orig(long.tokens)
        for seg in long.segments:
            seg.tokens = self.to_orig(seg.tokens)
        return long

    def generation_config(self, gen, *, inverse: bool = False):
        """A copy of a transformers ``GenerationConfig`` (or ``WhisperConfig``) with every token id
        in model ids (``inverse``: back to original ids). Duck-typed: only attributes are read.
        Alignment heads and ``max_initial_timestamp_index`` are positions, not ids: unchanged."""
        import copy

        one = (lambda i: self.to_orig([i])[0]) if inverse else self.one
        many = self.to_orig if inverse else self.kept_only
        out = copy.deepcopy(gen)
        for name in ID_FIELDS:
            value = getattr(out, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(out, name, one(value))
            elif isinstance(value, list) and all(isinstance(v, int) for v in value):  # eos may be a list
                setattr(out, name, list(many(value)) if name in LIST_FIELDS else [one(v) for v in value])
        for name in ("lang_to_id", "task_to_id"):
            table = getattr(out, name, None)
            if isinstance(table, dict):
                setattr(out, name, {k: one(v) for k, v in table.items()})
        forced = getattr(out, "forced_decoder_ids", None)
        if forced:
            out.forced_decoder_ids = [[pos, one(i)] for pos, i in forced]
        return out

    # ---- checks and files ---------------------------------------------------------------------
    def check(self, *, vocab: int | None = None, tokenizer_size: int | None = None, where: str = "model") -> None:
        """Refuse a map whose size is not the weights' vocabulary or whose source is not the tokenizer's."""
        problems = []
        if vocab is not None and vocab != self.size:
            problems.append(f"the id map keeps {self.size} tokens but the weights have a vocabulary of {vocab}")
        if tokenizer_size is not None and tokenizer_size != self.source_vocab:
            problems.append(f"the id map is for a {self.source_vocab}-token vocabulary but the tokenizer has {tokenizer_size}")
        if problems:
            raise VocabMapError(f"{where}: {'; '.join(problems)}; re-create it with `slimwhisper prune --vocab` "
                                "(and export again)")

    def to_dict(self) -> dict:
        return {"format": VOCAB_MAP_FORMAT, "source_vocab": self.source_vocab, "language": self.language,
                "size": self.size, "kept": list(self.kept)}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / VOCAB_MAP_FILE
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict, where: str = VOCAB_MAP_FILE) -> VocabMap:
        if not isinstance(d, dict) or d.get("format") != VOCAB_MAP_FORMAT or not isinstance(d.get("kept"), list):
            raise VocabMapError(f"{where} is not a slimwhisper vocabulary id map (format {VOCAB_MAP_FORMAT}); "
                                "re-run `slimwhisper prune --vocab`")
        vmap = cls(tuple(d["kept"]), d.get("source_vocab"), d.get("language"))
        if d.get("size", vmap.size) != vmap.size:
            raise VocabMapError(f"{where} says size {d.get('size')} but lists {vmap.size} ids; the file is damaged")
        return vmap

    @classmethod
    def load(cls, path: str | Path) -> VocabMap:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VocabMapError(f"cannot read the vocabulary id map {p} ({exc}); re-create it") from exc
        return cls.from_dict(data, str(p))
