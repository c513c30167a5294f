"""Recovery of a vocabulary-pruned model (issue 12): the dense teacher's targets in the kept tokens.

The dense teacher writes some words with tokens that vocabulary pruning removed (" Chapter",
" expended"). Untrained, the pruned model then picks the nearest kept token and writes another
word (tiny.en at 30,000 tokens: "expended" -> "expanded", "juveniles" -> "juvenile"). Training it
on the teacher's transcripts RESPELLED in kept tokens teaches it to spell those words instead:

* **spelling** of a removed token t: the fewest kept tokens whose byte strings concatenate to t's
  (dynamic programming over t's bytes; ties go to the longer first piece). The 256 single-byte
  tokens are always kept (``compress/vocab.py``), so every token has a spelling.
* **KL target** at the first position of each word: the teacher's top-k, with every removed
  candidate's probability moved to the FIRST token of its spelling (log-sum-exp where several land
  on one id): the teacher's probability of starting that word, in tokens the student has.
* positions INSIDE a spelling (its 2nd.. piece) have no teacher distribution: the target is that
  piece (one-hot), so the KL and the CE agree there.

The same respelling maps finetune/LoRA examples (tokens only). Everything returned is in the
model's ids; the pruned model's ``slim_vocab`` (``runtime/vocabmap.py``) is the id map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from slimwhisper.runtime.vocabmap import VocabMap

NO_MASS = -1.0e4  # log-prob of padding slots in a top-k row (exp() == 0; finite, so 0 * log stays 0)


@dataclass
class Speller:
    """Original ids -> model ids, every removed id replaced by its kept spelling (memoised)."""

    vmap: VocabMap
    pieces: dict[int, str]  # original id -> its byte-level piece string (tokenizer.get_vocab())
    _kept: dict[str, int] = field(init=False)  # kept piece string -> model id
    _longest: int = field(init=False)
    _memo: dict[int, tuple[int, ...]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._kept = {self.pieces[o]: n for n, o in enumerate(self.vmap.kept) if o in self.pieces}
        self._longest = max(map(len, self._kept), default=1)

    @classmethod
    def for_tokenizer(cls, vmap: VocabMap, tokenizer) -> Speller:
        return cls(vmap, {int(i): p for p, i in tokenizer.get_vocab().items()})

    def spell(self, orig: int) -> tuple[int, ...]:
        if orig not in self._memo:
            new = self.vmap.kept_only([orig])
            self._memo[orig] = tuple(new) if new else self._split(self.pieces[orig])
        return self._memo[orig]

    def _split(self, s: str) -> tuple[int, ...]:
        # best[i] = (pieces, -len of first piece) for s[i:]; filled right to left
        n, longest = len(s), self._longest
        best: list[tuple[int, int, tuple[int, ...]] | None] = [None] * n + [(0, 0, ())]
        for i in range(n - 1, -1, -1):
            for j in range(min(n, i + longest), i, -1):
                tail = best[j]
                if tail is not None and s[i:j] in self._kept:
                    cand = (tail[0] + 1, -(j - i), (self._kept[s[i:j]], *tail[2]))
                    if best[i] is None or cand[:2] < best[i][:2]:
                        best[i] = cand
        if best[0] is None:  # cannot happen with the 256 byte tokens kept; say so if it does
            raise ValueError(f"token {s!r} cannot be spelled with the kept tokens (are the single-byte tokens kept?)")
        return best[0][2]

    def tokens(self, orig: Sequence[int]) -> tuple[list[int], list[int]]:
        """Model ids of an original-id sequence, and for each the index of the original token it spells."""
        out, src = [], []
        for k, o in enumerate(orig):
            sp = self.spell(int(o))
            out += sp
            src += [k] * len(sp)
        return out, src

    def topk_row(self, logp: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One teacher top-k row (original ids) -> the same mass on model ids (first pieces), k wide."""
        merged: dict[int, float] = {}
        for lp, i in zip(logp.float().tolist(), ids.tolist()):
            first = self.spell(int(i))[0]
            merged[first] = _logaddexp(merged[first], lp) if first in merged else lp
        return self._pad(list(merged.items()), len(ids))

    def one_hot_row(self, target: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pad([(target, 0.0)], k)

    def _pad(self, pairs: list[tuple[int, float]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Padding slots get distinct unused ids with no mass: topk_kl renormalises the student over
        # the row's ids, and a repeated id would be counted twice in that normaliser.
        used = {i for i, _ in pairs}
        spare = (i for i in range(self.vmap.size) if i not in used)
        pairs = pairs + [(next(spare), NO_MASS) for _ in range(k - len(pairs))]
        return torch.tensor([lp for _, lp in pairs]), torch.tensor([i for i, _ in pairs], dtype=torch.int32)


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def respell_item(item, speller: Speller):
    """A teacher-cache item (``train/teacher.TeacherItem``) in the pruned model's ids."""
    tokens = item.tokens[0].tolist()
    prefix, _ = speller.tokens(tokens[: item.n_prefix])
    body, src = speller.tokens(tokens[item.n_prefix :])  # text + eot
    k = item.topk_ids.shape[-1]
    rows = [speller.topk_row(item.topk_logp[s], item.topk_ids[s]) if pos == 0 or src[pos - 1] != s
            else speller.one_hot_row(body[pos], k) for pos, s in enumerate(src)]  # fmt: skip
    logp = torch.stack([r[0] for r in rows]).half()
    ids = torch.stack([r[1] for r in rows])
    return replace(item, tokens=torch.tensor([prefix + body]), n_prefix=len(prefix), topk_logp=logp, topk_ids=ids)


def respell_example(example, speller: Speller):
    """A finetune/LoRA example (``compress/calib.CalibExample``) in the pruned model's ids."""
    tokens = example.tokens[0].tolist()
    prefix, _ = speller.tokens(tokens[: example.n_prefix])
    body, _ = speller.tokens(tokens[example.n_prefix :])
    return replace(example, tokens=torch.tensor([prefix + body]), n_prefix=len(prefix))


@dataclass
class Respelled(Sequence):
    """A lazy view of examples (a teacher cache loads one clip per access) in the model's ids."""

    examples: Sequence
    speller: Speller

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        fn = respell_item if hasattr(ex, "topk_ids") else respell_example
        return fn(ex, self.speller)


def removed_share(examples: Sequence, speller: Speller) -> tuple[int, int]:
    """(target tokens whose id was removed, all target tokens) over ``examples`` (original ids)."""
    gone = total = 0
    for ex in examples:
        body = ex.tokens[0, ex.n_prefix :].tolist()
        total += len(body)
        gone += sum(not speller.vmap.kept_only([int(i)]) for i in body)
    return gone, total


def in_model_ids(loaded, examples: Sequence, log=print) -> Sequence:
    """``examples`` (original ids) as the model sees them: unchanged, or respelled (a lazy view)
    when ``loaded`` is vocabulary-pruned; says how many target tokens needed a spelling."""
    vmap = getattr(loaded.model, "slim_vocab", None)
    if vmap is None:
        return examples
    speller = Speller.for_tokenizer(vmap, loaded.processor.tokenizer)
    gone, total = removed_share(examples, speller)
    log(f"vocabulary-pruned model ({vmap.size} of {vmap.source_vocab} tokens): {gone} of {total} target tokens "
        f"({100 * gone / max(total, 1):.2f}%) were removed and are respelled in kept tokens")
    return Respelled(examples, speller)
