"""Token search over filtered logits: greedy / temperature sampling and beam search
(openai/whisper ``decoding.py``: ``GreedyDecoder``, ``BeamSearchDecoder``, ``MaximumLikelihoodRanker``).

A search sees ``rows = n_audio * group`` sequences (group = beam size, or best_of when sampling),
returns the next tokens and which row each one continues (the engine reorders the KV cache by it),
and at the end the candidates per audio with their summed log-probabilities.
"""

from __future__ import annotations

import numpy as np

from slimwhisper.runtime.filters import chosen_logprobs, log_softmax


class GreedySearch:
    """Argmax at temperature 0, else one sample per row from softmax(logits / T)."""

    def __init__(self, eot: int, temperature: float, rng: np.random.Generator):
        self.eot, self.temperature, self.rng = eot, temperature, rng

    def update(self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray):
        if self.temperature == 0:
            nxt = np.argmax(logits, axis=-1)
        else:  # Gumbel-max: the same distribution as torch.distributions.Categorical(logits / T)
            g = self.rng.gumbel(size=logits.shape).astype(np.float32)
            nxt = np.argmax(logits / np.float32(self.temperature) + g, axis=-1)
        done = tokens[:, -1] == self.eot
        sum_logprobs += np.where(done, 0.0, chosen_logprobs(logits, nxt))
        nxt = np.where(done, self.eot, nxt)
        tokens = np.concatenate([tokens, nxt[:, None].astype(np.int64)], axis=1)
        return tokens, np.arange(len(nxt)), bool(np.all(tokens[:, -1] == self.eot))

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray, group: int):
        tokens = np.concatenate([tokens, np.full((len(tokens), 1), self.eot, np.int64)], axis=1)
        n = len(tokens) // group
        return ([[tuple(int(t) for t in tokens[i * group + j]) for j in range(group)] for i in range(n)],
                [[float(sum_logprobs[i * group + j]) for j in range(group)] for i in range(n)])


class BeamSearch:
    """openai/whisper's beam search: each beam proposes its ``beam + 1`` best tokens; the best
    ``beam`` unfinished candidates continue; an audio is done when ``round(beam * patience)``
    sequences have ended (patience 1.0 as in faster-whisper)."""

    def __init__(self, eot: int, beam_size: int, patience: float = 1.0):
        self.eot, self.beam_size = eot, beam_size
        self.max_candidates = max(1, round(beam_size * patience))
        self.finished: list[dict[tuple, float]] | None = None

    def update(self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray):
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
        logprobs = log_softmax(logits)
        next_tokens, sources, newly = [], [], []
        for i in range(n_audio):
            scores, origin = {}, {}
            for j in range(self.beam_size):
                row = i * self.beam_size + j
                k = min(self.beam_size + 1, logprobs.shape[1])
                top = np.argpartition(-logprobs[row], k - 1)[:k]
                top = top[np.argsort(-logprobs[row, top], kind="stable")]
                prefix = tuple(int(t) for t in tokens[row])
                for tok in top:
                    seq = (*prefix, int(tok))
                    scores[seq] = float(sum_logprobs[row] + logprobs[row, tok])
                    origin[seq] = row
            finished, saved = {}, 0
            for seq in sorted(scores, key=scores.get, reverse=True):
                if seq[-1] == self.eot:
                    finished[seq] = scores[seq]
                else:
                    sum_logprobs[len(next_tokens)] = scores[seq]
                    next_tokens.append(seq)
                    sources.append(origin[seq])
                    saved += 1
                    if saved == self.beam_size:
                        break
            newly.append(finished)
        for before, new in zip(self.finished, newly):
            for seq in sorted(new, key=new.get, reverse=True):
                if len(before) >= self.max_candidates:
                    break
                before[seq] = new[seq]
        done = all(len(s) >= self.max_candidates for s in self.finished)
        return np.asarray(next_tokens, dtype=np.int64), np.asarray(sources), done

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray, group: int):
        finished = self.finished or [{} for _ in range(len(tokens) // group)]
        for i, seqs in enumerate(finished):
            if len(seqs) < self.beam_size:  # not enough ended: add the best unfinished ones
                rows = range(i * group, (i + 1) * group)
                for row in sorted(rows, key=lambda r: -sum_logprobs[r]):
                    seqs[(*map(int, tokens[row]), self.eot)] = float(sum_logprobs[row])
                    if len(seqs) >= self.beam_size:
                        break
        return [list(s) for s in finished], [list(s.values()) for s in finished]


def rank(candidates: list[tuple], logprobs: list[float], sample_begin: int, eot: int,
         length_penalty: float | None = None) -> int:
    """openai/whisper ``MaximumLikelihoodRanker``: the best sum-logprob per (penalised) length."""
    def score(seq: tuple, lp: float) -> float:
        length = _text_length(seq, sample_begin, eot)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return lp / max(penalty, 1e-9) if penalty else lp
    return int(np.argmax([score(s, lp) for s, lp in zip(candidates, logprobs)]))


def _text_length(seq: tuple, sample_begin: int, eot: int) -> int:
    out = seq[sample_begin:]
    return out.index(eot) if eot in out else len(out)
