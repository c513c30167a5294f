"""Streamed calibration statistics: float64 Gram matrices at the inputs of the layers a re-fit changes.

For every sublayer (``encoder.3.self_attn``, ``decoder.0.cross_attn``, ``decoder.1.ffn``, ...) the
*consumer* is the projection whose inputs pruning removes: attention ``out_proj`` (inputs = the
concatenated per-head V outputs, so heads and V/O channels are its columns) and FFN ``fc2``
(inputs = the FFN neurons). With X the consumer inputs on calibration tokens and a constant-one
column for the bias, ``H = [X,1]^T [X,1]`` (OBC / ZipLM / SlimGPT). Attention blocks also keep the
Gram of the query input (the LayerNorm output) and of the key input (the same for self-attention,
the encoder output for cross-attention): Q/K scores need E[q_c^2] and E[k_c^2] from them.

Nothing is held per token: each example's activations are folded into the Grams as soon as a
sublayer has produced them. What IS held is the residual stream at the current depth for every
calibration example (N x 1500 x d for the encoder), so the model is walked once, sublayer by
sublayer (``walk``), instead of once per layer. Encoder rows are all 1500 frames of the 30 s
window (``stride`` > 1 subsamples them); decoder rows are the teacher-forced positions of the
prefix + label (the dense model's own transcript where a clip has no text, see ``calib.py``).

``dense_stats`` caches its result on disk under a key made of the sha256 of the model's weights,
of the calibration features and tokens, and of these settings: a cache made for other weights is
never found, and a file whose recorded weights hash disagrees is recomputed, not reused.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from slimwhisper.compress.groups import ATTN_ATTR, layers_of
from slimwhisper.errors import UserError, check_positive_int, raise_problems

STATS_VERSION = 2  # 2: BlockStats.H_fold (the even-indexed examples' consumer Gram, for cross-validated damping)


class StatsError(UserError, ValueError):
    """Calibration statistics cannot be computed as configured."""


@dataclass(frozen=True)
class StatsConfig:
    batch: int = 8  # encoder examples per forward
    stride: int = 1  # keep every stride-th encoder frame (1 = all 1500)
    cache_dir: str | None = None  # None: <slimwhisper cache>/calib-stats; "" disables the cache

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_positive_int(problems, "stats.batch", self.batch)
        check_positive_int(problems, "stats.stride", self.stride)
        raise_problems(StatsError, "invalid statistics config", problems)

    def to_dict(self) -> dict:
        return asdict(self)

    def cache_root(self) -> Path | None:
        if self.cache_dir == "":
            return None
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        from slimwhisper.models.cache import cache_root

        return cache_root() / "calib-stats"


@dataclass(frozen=True)
class Sublayer:
    side: str
    layer: int
    component: str  # self_attn | cross_attn | ffn

    @property
    def block(self) -> str:
        return f"{self.side}.{self.layer}.{self.component}"


def sublayers(model: nn.Module, side: str) -> list[Sublayer]:
    comps = ("self_attn", "cross_attn", "ffn") if side == "decoder" else ("self_attn", "ffn")
    return [Sublayer(side, i, c) for i in range(len(layers_of(model, side))) for c in comps]


def module_of(model: nn.Module, sub: Sublayer) -> nn.Module:
    layer = layers_of(model, sub.side)[sub.layer]
    return layer if sub.component == "ffn" else getattr(layer, ATTN_ATTR[sub.component])


def consumer(model: nn.Module, sub: Sublayer) -> nn.Linear:
    mod = module_of(model, sub)
    return mod.fc2 if sub.component == "ffn" else mod.out_proj


def run_sublayer(model, sub: Sublayer, h: torch.Tensor, mask=None, enc=None) -> torch.Tensor:
    """Residual stream after ``sub`` (the same arithmetic as transformers' Whisper layers, eval mode)."""
    layer = layers_of(model, sub.side)[sub.layer]
    if sub.component == "ffn":
        x = layer.final_layer_norm(h)
        return h + layer.fc2(layer.activation_fn(layer.fc1(x)))
    if sub.component == "self_attn":
        out, _ = layer.self_attn(layer.self_attn_layer_norm(h), attention_mask=mask)
    else:
        out, _ = layer.encoder_attn(layer.encoder_attn_layer_norm(h), key_value_states=enc)
    return h + out


def fold_rows(x: torch.Tensor, first: int, fold: int = 0) -> torch.Tensor:
    """The examples of ``x`` (along dim 0, the first one with global index ``first``) in fold A
    (``fold=0``: EVEN global index) or fold B (``fold=1``: odd)."""
    return x[(first + fold) % 2 :: 2]


def fold_gram(xp: torch.Tensor, xd: torch.Tensor, first: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(the Gram [xp,1]^T [xd,1] over all examples, the same over fold A), as the sum of the two
    folds' Grams: the fold split for 2-fold cross-validation costs no extra product."""
    halves = []
    for fold in (0, 1):
        p = augment(fold_rows(xp, first, fold), stride)
        d = p if xd is xp else augment(fold_rows(xd, first, fold), stride)
        halves.append(p.T @ d)
    return halves[0] + halves[1], halves[0]


def augment(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Rows of ``x`` (any leading dims) as float64 with a constant-one column appended."""
    x = x[:, ::stride] if stride > 1 and x.dim() == 3 else x
    x = x.reshape(-1, x.shape[-1]).to(torch.float64)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], dim=1)


class Capture:
    """Forward pre-hook that keeps the last input of a module (the consumer's X)."""

    def __init__(self, module: nn.Module):
        self.x: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.x = args[0].detach()

    def close(self) -> None:
        self.handle.remove()


# ---- residual streams -------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _first_layer_input(stack: nn.Module, call: Callable[[], object]) -> torch.Tensor:
    """The hidden states entering ``stack.layers[0]`` (embeddings + positions), by a stopped forward."""
    got = {}

    def hook(module, args, kwargs):
        got["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise _Stop

    handle = stack.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["h"]


@dataclass
class Streams:
    """Per-example residual streams of one model at the current depth."""

    enc: list[torch.Tensor]  # encoder batches (B, T, d)
    dec: list[torch.Tensor] = field(default_factory=list)  # one (1, L, d) per example
    enc_out: list[torch.Tensor] = field(default_factory=list)  # (1, T, d) per example, after the encoder


def encoder_inputs(model, examples, batch: int) -> list[torch.Tensor]:
    enc = model.model.encoder
    out = []
    for i in range(0, len(examples), batch):
        feats = torch.cat([ex.features for ex in examples[i : i + batch]])
        out.append(_first_layer_input(enc, lambda f=feats: enc(f)))
    return out


def decoder_inputs(model, examples, enc_out: list[torch.Tensor]) -> list[torch.Tensor]:
    dec = model.model.decoder
    return [
        _first_layer_input(dec, lambda ex=ex, e=e: dec(input_ids=ex.tokens[:, :-1], encoder_hidden_states=e))
        for ex, e in zip(examples, enc_out, strict=True)
    ]


def causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu(1)[None, None]


def finish_encoder(model, streams: Streams) -> None:
    norm = model.model.encoder.layer_norm
    streams.enc_out = [norm(h[i : i + 1]) for h in streams.enc for i in range(h.shape[0])]


# ---- dense statistics (cached) ----------------------------------------------------------------


@dataclass
class BlockStats:
    H: torch.Tensor  # (n+1, n+1) Gram of [x, 1] at the consumer input, float64
    rows: int
    q: torch.Tensor | None = None  # attention: Gram of [LN(h), 1] (query input)
    kv: torch.Tensor | None = None  # attention: Gram of the key input (self: = q; cross: encoder output)
    energy: float = 0.0  # sum of squares of the residual stream after the sublayer
    H_fold: torch.Tensor | None = None  # the same Gram over fold A only (``fold_rows``); fold B = H - H_fold

    def folds(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """[(H_pp, H_pd)] of fold A and fold B (dense statistics: pruned = dense inputs), or None."""
        if self.H_fold is None:
            return None
        b = self.H - self.H_fold
        return [(self.H_fold, self.H_fold), (b, b)]

    def mean(self) -> torch.Tensor:
        return self.H[-1, :-1] / max(self.rows, 1)


@dataclass
class DenseStats:
    blocks: dict[str, BlockStats]
    n_examples: int
    seconds: float = 0.0
    cached: bool = False
    key: str = ""

    def rows_per_example(self, block: str) -> float:
        return self.blocks[block].rows / max(self.n_examples, 1)


def _gram(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    a = augment(x, stride)
    return a.T @ a


class _Acc:
    def __init__(self):
        self.H = self.q = self.kv = self.H_fold = None
        self.rows, self.energy = 0, 0.0

    def add(self, name: str, g: torch.Tensor) -> None:
        cur = getattr(self, name)
        setattr(self, name, g if cur is None else cur + g)


@torch.no_grad()
def _collect_block(model, sub: Sublayer, streams: Streams, stride: int, acc: _Acc) -> None:
    cap = Capture(consumer(model, sub))
    layer = layers_of(model, sub.side)[sub.layer]
    ln = None if sub.component == "ffn" else getattr(layer, f"{ATTN_ATTR[sub.component]}_layer_norm")
    try:
        hs = streams.enc if sub.side == "encoder" else streams.dec
        first = 0  # global index of the first example in h
        for i, h in enumerate(hs):
            s = stride if sub.side == "encoder" else 1
            mask = causal_mask(h.shape[1], h) if sub.component == "self_attn" and sub.side == "decoder" else None
            enc = streams.enc_out[i] if sub.component == "cross_attn" else None
            new = run_sublayer(model, sub, h, mask, enc)
            g, g_fold = fold_gram(cap.x, cap.x, first, s)
            acc.add("H", g)
            acc.add("H_fold", g_fold)
            first += h.shape[0]
            acc.rows += cap.x[:, ::s].shape[0] * cap.x[:, ::s].shape[1]
            if ln is not None:
                g = _gram(ln(h), s)
                acc.add("q", g)
                acc.add("kv", g if enc is None else _gram(enc, stride))
            acc.energy += float(new[:, ::s].double().square().sum())
            hs[i] = new
    finally:
        cap.close()


@torch.no_grad()
def collect_dense(model, examples, config: StatsConfig, progress: bool = True) -> DenseStats:
    """One walk of the dense model; a ``BlockStats`` per sublayer."""
    from slimwhisper.progress import progress_bar

    t0 = time.perf_counter()
    was = model.training
    model.eval()
    streams = Streams(encoder_inputs(model, examples, config.batch))
    blocks: dict[str, BlockStats] = {}
    subs = sublayers(model, "encoder") + sublayers(model, "decoder")
    with progress_bar(len(subs), "calibration statistics", enabled=progress) as bar:
        for sub in subs:
            if sub.side == "decoder" and not streams.dec:
                finish_encoder(model, streams)
                streams.dec = decoder_inputs(model, examples, streams.enc_out)
            acc = _Acc()
            _collect_block(model, sub, streams, config.stride, acc)
            blocks[sub.block] = BlockStats(acc.H, acc.rows, acc.q, acc.kv, acc.energy, acc.H_fold)
            bar.advance()
    model.train(was)
    return DenseStats(blocks, len(examples), time.perf_counter() - t0)


# ---- cache ------------------------------------------------------------------------------------


def weights_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes, bytes) of ``model``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def examples_hash(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.id.encode())
        h.update(ex.features.detach().cpu().float().contiguous().numpy().tobytes())
        h.update(ex.tokens.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_key(wh: str, eh: str, config: StatsConfig, what: str = "dense") -> str:
    settings = f"{what}|v{STATS_VERSION}|stride={config.stride}"
    return hashlib.sha256(f"{wh}|{eh}|{settings}".encode()).hexdigest()[:24]


def _save(path: Path, stats: DenseStats, wh: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"weights": wh, "version": STATS_VERSION, "n": stats.n_examples,
               "blocks": {k: asdict(v) for k, v in stats.blocks.items()}}  # fmt: skip
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load(path: Path, wh: str) -> DenseStats | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        print(f"calibration cache {path} unreadable ({exc}); recomputing")
        return None
    if payload.get("weights") != wh or payload.get("version") != STATS_VERSION:
        print(f"calibration cache {path} was made for other weights or another version; recomputing")
        return None
    return DenseStats({k: BlockStats(**v) for k, v in payload["blocks"].items()}, payload["n"], cached=True)


def dense_stats(model, examples, config: StatsConfig, progress: bool = True, log=print) -> DenseStats:
    """``collect_dense`` through the on-disk cache (see the module docstring for the key)."""
    if not examples:
        raise StatsError("calibration statistics need at least 1 utterance with audio, got 0")
    t0 = time.perf_counter()
    wh = weights_hash(model)
    key = cache_key(wh, examples_hash(examples), config)
    root = config.cache_root()
    path = None if root is None else root / f"dense-{key}.pt"
    stats = _load(path, wh) if path is not None else None
    if stats is None:
        stats = collect_dense(model, examples, config, progress)
        if path is not None:
            _save(path, stats, wh)
    stats.key, stats.seconds = key, time.perf_counter() - t0
    mb = sum(b.H.numel() + sum(t.numel() for t in (b.q, b.kv) if t is not None) for b in stats.blocks.values()) * 8 / 2**20
    log(f"calibration statistics: {len(examples)} utterances, {stats.seconds:.1f} s"
        f"{' (from cache ' + str(path) + ')' if stats.cached else ''}, Grams {mb:.0f} MiB float64")  # fmt: skip
    return stats
