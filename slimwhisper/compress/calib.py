"""Calibration data and the teacher-forced loss every gradient-based score differentiates.

The loss is Whisper's training objective: cross-entropy of the next token, teacher-forced on
``<|startoftranscript|> [<|en|><|transcribe|>] <|notimestamps|> text <|endoftext|>`` and counted
only on the text and end-of-text positions (the prefix is forced at inference, so its
likelihood carries no information about the weights we might remove).

Label-free calibration: an utterance without a reference is labelled with the DENSE model's own
greedy transcript, computed once before any pruning, so the scores measure how far a weight
matters for reproducing the dense model's output (a self-distillation target, as in
"Pruning as Regularization", arXiv 2511.08092, which also calibrates on unlabeled audio).

Examples are kept at batch size 1 on purpose: the empirical Fisher and the per-sample Taylor
term need per-utterance gradients, which a batched backward would sum away.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from slimwhisper.errors import UserError

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

SAMPLE_RATE = 16_000
MAX_NEW_TOKENS = 200  # Whisper's text context is 448; a 30 s window rarely needs more than ~200


class CalibError(UserError, ValueError):
    """Calibration data is unusable; the message says what to fix."""


@dataclass(frozen=True)
class CalibConfig:
    """Which utterances calibrate the scores.

    ``label_free``: True ignores references and labels every utterance with the dense model's
    greedy transcript; False requires a reference for every utterance; None (default) uses the
    reference when there is one and the dense transcript otherwise.
    """

    data: str
    n: int = 32
    seed: int = 0
    label_free: bool | None = None
    more_data: tuple[str, ...] = ()  # further sets, drawn from together with ``data`` (one speaker is not enough)
    # Join the drawn clips into windows of up to this many seconds (``packing.pack_utterances``):
    # ``n`` counts clips, the examples are the windows. More speech frames and decoder tokens per
    # encoder pass; the dense model labels each window whole when ``label_free``.
    pack_seconds: float | None = None
    # Share of the examples teacher-forced in TIMESTAMP mode: prompt without <|notimestamps|>, label
    # the dense model's own greedy transcript with timestamp tokens (openai-whisper's rules). What
    # users run (``transcribe``/``eval`` default to timestamps) puts the decoder in that mode, which
    # a calibration of only no-timestamp prompts never shows the re-fits and the sensitivity KL
    # (tiny.en oneshot-35: ljspeech/dev 7.56% greedy without timestamps, 9.05% with; dense 5.89%
    # both). Only pseudo-labelled examples can take it (references carry no timestamps).
    timestamps: float = 0.0

    def __post_init__(self) -> None:
        from slimwhisper.packing import pack_seconds_problem

        problems = []
        if problem := timestamp_share_problem(self.timestamps, "calib.timestamps", "the examples"):
            problems.append(problem)
        elif self.timestamps > 0 and self.label_free is False:
            problems.append("calib.timestamps needs the dense model's transcripts (references have no timestamps): "
                            "drop label_free=False or set timestamps to 0")
        if problem := pack_seconds_problem(self.pack_seconds, "calib.pack_seconds"):
            problems.append(problem)
        if not isinstance(self.data, str) or not self.data:
            problems.append("calib.data must be a dataset path (a folder with transcripts.tsv or a .tsv file)")
        object.__setattr__(self, "more_data", (self.more_data,) if isinstance(self.more_data, str) else tuple(self.more_data))
        if any(not isinstance(d, str) or not d for d in self.more_data):
            problems.append(f"calib.more_data must be dataset paths, got {list(self.more_data)!r}")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            problems.append(f"calib.n must be an int >= 1, got {self.n!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            problems.append(f"calib.seed must be an int, got {self.seed!r}")
        if self.label_free not in (None, True, False):
            problems.append(f"calib.label_free must be true, false or null, got {self.label_free!r}")
        if problems:
            raise CalibError("invalid calibration config", problems)

    @property
    def datasets(self) -> list[str]:
        return [self.data, *self.more_data]


@dataclass
class CalibExample:
    """One utterance ready for a teacher-forced forward pass."""

    id: str
    features: torch.Tensor  # (1, n_mels, 3000) log-mel
    tokens: torch.Tensor  # (1, L) prefix + text + eot
    n_prefix: int  # loss is counted on target positions >= n_prefix
    pseudo: bool  # True when the text is the dense model's own transcript


def prefix_tokens(loaded: LoadedModel, timestamps: bool = False) -> list[int]:
    """Decoder prompt: SOT [+ language + task for multilingual models] [+ no-timestamps]."""
    tok = loaded.processor.tokenizer
    names = ["<|startoftranscript|>"]
    if loaded.multilingual:
        names += ["<|en|>", "<|transcribe|>"]
    if not timestamps:
        names.append("<|notimestamps|>")
    ids = tok.convert_tokens_to_ids(names)
    bad = [n for n, i in zip(names, ids, strict=True) if i is None or i == tok.unk_token_id]
    if bad:
        raise CalibError(f"tokenizer of {loaded.name} lacks special tokens {bad}")
    return list(ids)


def eot_id(loaded: LoadedModel) -> int:
    return int(loaded.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>"))


def features_of(loaded: LoadedModel, audio) -> torch.Tensor:
    fe = loaded.processor.feature_extractor
    feats = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    param = next(loaded.model.parameters())
    return feats.to(device=param.device, dtype=param.dtype)


@torch.no_grad()
def greedy_transcript(loaded: LoadedModel, features: torch.Tensor, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Greedy text tokens of the model (no timestamps), with a KV cache.

    Only text tokens (ids below end-of-text in Whisper's vocabulary) and end-of-text may be
    chosen, as Whisper's own decoder suppresses specials when no timestamps are asked for.
    """
    model, eot = loaded.model, eot_id(loaded)
    enc = model.model.encoder(features)
    ids = torch.tensor([prefix_tokens(loaded)], device=features.device)
    out: list[int] = []
    past = None
    step = ids
    for _ in range(max_new_tokens):
        res = model(encoder_outputs=enc, decoder_input_ids=step, past_key_values=past, use_cache=True)
        past = res.past_key_values
        logits = res.logits[0, -1]
        logits[eot + 1 :] = float("-inf")
        nxt = int(logits.argmax())
        if nxt == eot:
            break
        out.append(nxt)
        step = torch.tensor([[nxt]], device=features.device)
    return out


def dense_label(loaded: LoadedModel, features: torch.Tensor, timestamps: bool = False,
                max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """The dense model's greedy pseudo-label of one window: text tokens, or (``timestamps``) the
    transcript with timestamp tokens after the prompt without <|notimestamps|> (openai's rules,
    through the one decoding engine). Calibration and the teacher cache both label with this."""
    if not timestamps:
        return greedy_transcript(loaded, features, max_new_tokens)
    from slimwhisper.decoding_torch import greedy_tokens

    return greedy_tokens(loaded, features, prefix_tokens(loaded, timestamps=True), max_new_tokens, timestamps=True)


def timestamp_share_problem(value, name: str, of: str) -> str | None:
    """Why ``value`` is not a share (in [0, 1]) of ``of`` decoded with timestamps, or None."""
    if not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1:
        return None
    return f"{name} is the share of {of} with timestamps, in [0, 1]; got {value!r}"


def timestamp_rows(n: int, share: float) -> list[bool]:
    """Which of ``n`` examples are calibrated with timestamps: ``round(n * share)`` of them, spread
    evenly over the (id-sorted) examples so that every data set gets its share."""
    return [int((i + 1) * share + 1e-9) > int(i * share + 1e-9) for i in range(n)]


def text_tokens(loaded: LoadedModel, text: str) -> list[int]:
    # Whisper transcripts start with a space token, as in training data.
    return list(loaded.processor.tokenizer.encode(" " + text.strip(), add_special_tokens=False))


def _select(config: CalibConfig) -> list:
    """``config.n`` utterances drawn with ``config.seed`` from every set; only the chosen ones are decoded.

    Evaluation sets are refused (``data.select_utterances``): scores and Gram matrices fitted on
    the audio a table is scored on would flatter it.
    """
    from slimwhisper.data import select_utterances
    from slimwhisper.packing import pack_utterances

    utts = select_utterances(config.datasets, config.n, config.seed, error=CalibError, use="calibrate", what="calibration")
    return utts if config.pack_seconds is None else pack_utterances(utts, config.pack_seconds, error=CalibError)


def prepare(loaded: LoadedModel, config: CalibConfig, utterances=None, cache_root: Path | None = None) -> list[CalibExample]:
    """Features and label tokens for ``config.n`` utterances (dense pseudo-labels where needed).

    Call this on the DENSE model before any pruning: pseudo-labels come from ``loaded.model``.
    ``utterances`` bypasses loading (tests, or callers that already hold the data).
    ``cache_root``: pseudo-labels are kept in ``labels-<weights sha256>.json`` there, by audio sha256,
    so a second run at another ratio does not decode the calibration audio again.
    """
    utts = list(utterances) if utterances is not None else _select(config)
    if not utts:
        raise CalibError("calibration needs at least 1 utterance, got 0")
    missing = [u.id for u in utts if not (u.text or "").strip()]
    if config.label_free is False and missing:
        raise CalibError(
            f"{len(missing)} calibration utterances have no reference text (e.g. {missing[:3]}); "
            "pass label_free=None/True to label them with the dense model's transcript"
        )
    eot = eot_id(loaded)
    prefixes = {ts: prefix_tokens(loaded, timestamps=ts) for ts in (False, True)}
    was_training = loaded.model.training
    loaded.model.eval()
    from slimwhisper.compress.stats import weights_hash

    wh = weights_hash(loaded.model) if cache_root is not None else ""  # once for both prompts' caches
    labels = {ts: LabelCache(wh, prefixes[ts], cache_root) for ts in (False, True)}
    out = []
    for u, ts in zip(utts, timestamp_rows(len(utts), config.timestamps), strict=True):
        feats = features_of(loaded, u.audio)
        use_model = config.label_free is True or not (u.text or "").strip()
        ts = ts and use_model
        text = labels[ts].get(u.audio, lambda f=feats, t=ts: dense_label(loaded, f, t)) if use_model else text_tokens(loaded, u.text)
        tokens = torch.tensor([prefixes[ts] + text + [eot]], device=feats.device)
        out.append(CalibExample(u.id, feats, tokens, len(prefixes[ts]), use_model))
    for cache in labels.values():
        cache.save()
    loaded.model.train(was_training)
    return out


class LabelCache:
    """The dense model's greedy transcripts by audio sha256, in one JSON file per weights hash
    (and decoding prefix / token cap); a file that cannot be read is ignored and rewritten."""

    def __init__(self, weights_sha256: str, prefix: list[int], root: Path | None) -> None:
        self.path, self.labels, self.new = None, {}, 0
        if root is None:
            return
        key = hashlib.sha256(f"{weights_sha256}|{prefix}|{MAX_NEW_TOKENS}".encode()).hexdigest()[:24]
        self.path = Path(root) / f"labels-{key}.json"
        if self.path.is_file():
            try:
                self.labels = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                print(f"label cache {self.path} unreadable ({exc}); relabelling")

    def get(self, audio, label) -> list[int]:
        key = hashlib.sha256(audio.astype("float32").tobytes()).hexdigest()
        if key not in self.labels:
            self.labels[key], self.new = label(), self.new + 1
        return list(self.labels[key])

    def save(self) -> None:
        if self.path is None or not self.new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.labels))
        tmp.replace(self.path)


def example_loss(model, ex: CalibExample) -> torch.Tensor:
    """Mean cross-entropy over the text + end-of-text targets of one example."""
    inputs, targets = ex.tokens[:, :-1], ex.tokens[:, 1:]
    logits = model(input_features=ex.features, decoder_input_ids=inputs).logits
    keep = slice(ex.n_prefix - 1, None)  # target position i predicts tokens[i+1]
    return torch.nn.functional.cross_entropy(logits[0, keep].float(), targets[0, keep])


# ---- batches (recovery / sparse-group-lasso training) ---------------------------------------------

IGNORE = -100  # target id cross_entropy skips: prompt positions and padding


@dataclass
class Batch:
    """Several ``CalibExample`` stacked for one forward pass (training, distillation).

    Every feature tensor already spans the 30 s window the feature extractor pads to, so they
    stack as they are; token rows are right-padded with end-of-text. Padding sits AFTER the
    real tokens, so the causal decoder never attends to it from a counted position.
    """

    features: torch.Tensor  # (B, n_mels, 3000)
    inputs: torch.Tensor  # (B, L-1) decoder input ids
    targets: torch.Tensor  # (B, L-1) next token, IGNORE where the loss must not count

    def __len__(self) -> int:
        return self.features.shape[0]


def collate(examples: list[CalibExample], pad_id: int) -> Batch:
    """Stack examples; targets are masked exactly as in ``example_loss`` (prompt not counted)."""
    width = max(ex.tokens.shape[1] for ex in examples)
    inputs = torch.full((len(examples), width - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width - 1), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        toks = ex.tokens[0].cpu()
        n = toks.numel()
        inputs[row, : n - 1] = toks[:-1]
        targets[row, ex.n_prefix - 1 : n - 1] = toks[ex.n_prefix :]
    device = examples[0].features.device
    return Batch(torch.cat([ex.features for ex in examples]), inputs.to(device), targets.to(device))


def batch_logits(model, batch: Batch) -> torch.Tensor:
    return model(input_features=batch.features, decoder_input_ids=batch.inputs).logits


def batch_loss(model, batch: Batch, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over every counted target of the batch (token mean; = ``example_loss`` for B=1)."""
    logits = batch_logits(model, batch) if logits is None else logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


def per_example_grads(model, examples: list[CalibExample], params: dict[str, torch.nn.Parameter], progress=None) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Yield (loss, {name: grad}) for each example, one backward per utterance.

    Dropout is off (eval mode) so the gradients are those of the deterministic model that will
    be pruned. Only ``params`` require grad during the pass, to save memory and time.
    """
    was_training = model.training
    model.eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    wanted = {id(p) for p in params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    try:
        for ex in examples:
            model.zero_grad(set_to_none=True)
            loss = example_loss(model, ex)
            loss.backward()
            grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
            yield float(loss.detach()), grads
            if progress is not None:
                progress()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
