"""The teacher cache: what the dense model says about each training clip, computed once, on disk.

Per clip (``TeacherItem``): the log-mel features, the dense encoder output (float16), optionally
the input of every encoder layer plus the last layer's output before the final LayerNorm
(float16, ``hidden_states``: the targets of layer-wise distillation), the dense greedy transcript
(the pseudo-label, Whisper's own decoding rules: ``calib.dense_label``) and, teacher-forced
on that transcript, the top-k log-probabilities of every counted decoder position (k = 64 keeps
a KL term at ~0.1% of the storage of 51,865 floats per token; "sparse" / top-k KD as in
Hinton et al. 2015 with the tail dropped, cf. Raman et al. 2023).

Keys: a cache folder ``ROOT/<key>/`` holds the clips of ONE teacher and ONE setting, where
``key = sha256(teacher weights) + sha256(settings)``; each clip file is named by the sha256 of its
audio samples and carries the key again (checked on read). A teacher with other weights therefore
never reads another teacher's clips: it builds (and says so). What was reused and the size on
disk are printed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimwhisper.compress.calib import (
    IGNORE,
    MAX_NEW_TOKENS,
    Batch,
    collate,
    dense_label,
    eot_id,
    features_of,
    prefix_tokens,
    timestamp_rows,
    timestamp_share_problem,
)
from slimwhisper.errors import UserError, raise_problems
from slimwhisper.outputs import MARKER, write_file, write_json

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

FORMAT = "slimwhisper-teacher-cache"
VERSION = 1


class TeacherCacheError(UserError, ValueError):
    """The teacher cache cannot be used as asked (a folder that is not a cache, bad settings)."""


@dataclass(frozen=True)
class TeacherConfig:
    top_k: int = 64
    hidden_states: bool = False  # per-layer encoder inputs (+ last output), for layer-wise distillation
    max_new_tokens: int = MAX_NEW_TOKENS
    # Share of the clips whose pseudo-label is the teacher's TIMESTAMPED transcript (prompt without
    # <|notimestamps|>), spread evenly (``calib.timestamp_rows``): users decode with timestamps, and a
    # student distilled only without them is never trained in that mode (see ``CalibConfig.timestamps``).
    timestamps: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if problem := timestamp_share_problem(self.timestamps, "teacher.timestamps", "the clips"):
            problems.append(problem)
        for name in ("top_k", "max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"teacher.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.hidden_states, bool):
            problems.append(f"teacher.hidden_states must be true or false, got {self.hidden_states!r}")
        raise_problems(TeacherCacheError, "invalid teacher-cache settings", problems)

    def to_dict(self) -> dict:
        d = {**asdict(self), "version": VERSION}
        if not self.timestamps:  # caches built before the field existed keep their key
            d.pop("timestamps")
        return d


@dataclass
class TeacherItem:
    """One clip as the dense teacher sees it (tensors on CPU)."""

    id: str
    features: torch.Tensor  # (1, n_mels, 3000) float32
    tokens: torch.Tensor  # (1, L): prefix + pseudo-label + eot
    n_prefix: int
    encoder_out: torch.Tensor  # (n_ctx, d) float16, after the final LayerNorm
    topk_logp: torch.Tensor  # (L - n_prefix, k) float16: log p_teacher at counted positions
    topk_ids: torch.Tensor  # (L - n_prefix, k) int32
    hidden: torch.Tensor | None = None  # (n_layers + 1, n_ctx, d) float16: layer inputs, then last output (pre-LN)
    pseudo: bool = True

    def calib_example(self):
        """The teacher-forcing part alone (features, prefix + pseudo-label): what CE-only training reads."""
        from slimwhisper.compress.calib import CalibExample

        return CalibExample(self.id, self.features, self.tokens, self.n_prefix, self.pseudo)


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name, shape, dtype and bytes (tied weights counted once)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def audio_hash(audio) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def cache_key(weights: str, config: TeacherConfig) -> str:
    settings = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return f"{weights[:16]}-{settings[:8]}"


@torch.no_grad()
def teacher_item(teacher: LoadedModel, utt_id: str, audio, config: TeacherConfig, timestamps: bool = False) -> TeacherItem:
    """Features, encoder output (+ layer inputs), greedy pseudo-label (with timestamp tokens when
    ``timestamps``) and top-k log-probs of one clip."""
    model = teacher.model.eval()
    feats = features_of(teacher, audio)
    encoder = model.model.encoder
    captured: list[torch.Tensor] = []
    hooks = []
    if config.hidden_states:
        layers = list(encoder.layers)
        hooks = [layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach())) for layer in layers]
        hooks.append(layers[-1].register_forward_hook(lambda _m, _a, out: captured.append((out[0] if isinstance(out, tuple) else out).detach())))
    try:
        enc = encoder(feats).last_hidden_state
    finally:
        for hk in hooks:
            hk.remove()
    prefix, eot = prefix_tokens(teacher, timestamps=timestamps), eot_id(teacher)
    text = dense_label(teacher, feats, timestamps, config.max_new_tokens)
    tokens = torch.tensor([prefix + text + [eot]])
    logits = model(encoder_outputs=(enc,), decoder_input_ids=tokens[:, :-1].to(feats.device)).logits[0].float()
    logp = torch.log_softmax(logits[len(prefix) - 1 :], -1)  # counted positions: predict text + eot
    k = min(config.top_k, logp.shape[-1])
    values, ids = logp.topk(k, dim=-1)
    hidden = torch.cat([h[0:1] for h in captured]).half().cpu() if captured else None
    return TeacherItem(utt_id, feats.float().cpu(), tokens, len(prefix), enc[0].half().cpu(), values.half().cpu(),
                       ids.int().cpu(), hidden)  # fmt: skip


@dataclass
class TeacherCache:
    """A built cache: clip files in ``folder`` (loaded lazily, one per ``load``)."""

    folder: Path
    key: str
    files: list[Path]
    built: int
    reused: int

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> TeacherItem:
        return load_item(self.files[i], self.key)

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def describe(self) -> str:
        return (f"teacher cache {self.folder}: {len(self)} clips ({self.built} built, {self.reused} reused), "
                f"{self.bytes / 2**20:.1f} MiB")  # fmt: skip


def load_item(path: Path, key: str) -> TeacherItem:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("key") != key:
        raise TeacherCacheError(f"teacher cache file {path} was made for other teacher weights or settings; delete it")
    return TeacherItem(**{k: v for k, v in data.items() if k != "key"})


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise TeacherCacheError(f"teacher cache {root} is a file; give a folder")
    if root.is_dir() and any(root.iterdir()):
        marker = root / MARKER
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != "teacher-cache":
            raise TeacherCacheError(f"{root} is not a teacher cache made by slimwhisper; choose an empty or new folder")


def build_cache(
    teacher: LoadedModel,
    utterances: Iterable,
    root: str | Path,
    config: TeacherConfig = TeacherConfig(),
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TeacherCache:
    """Clips already cached for THIS teacher's weights and settings are reused; the rest are built."""
    from slimwhisper.progress import track

    root = Path(root)
    _check_root(root)
    weights = weights_hash(teacher.model)
    key = cache_key(weights, config)
    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    write_json(root / MARKER, {"kind": "teacher-cache"})
    if not (folder / "teacher.json").is_file():
        others = [p.name for p in root.iterdir() if p.is_dir() and p.name != key]
        note = f" ({len(others)} cache(s) of other teacher weights/settings there are not used)" if others else ""
        log(f"teacher cache: none for these weights in {root}: building {folder.name}{note}")
        write_json(folder / "teacher.json", {"format": FORMAT, "weights_sha256": weights, "settings": config.to_dict(),
                                             "teacher": teacher.name})  # fmt: skip
    files, built, reused = [], 0, 0
    utterances = list(utterances)
    stamped = timestamp_rows(len(utterances), config.timestamps)
    for utt, ts in track(list(zip(utterances, stamped)), description="teacher cache", enabled=progress):
        path = folder / f"{audio_hash(utt.audio)[:32]}.pt"
        if path.is_file():
            reused += 1
        else:
            item = teacher_item(teacher, utt.id, utt.audio, config, timestamps=ts)
            buf = io.BytesIO()
            torch.save({"key": key, **item.__dict__}, buf)
            write_file(path, buf.getvalue())
            built += 1
        files.append(path)
    cache = TeacherCache(folder, key, files, built, reused)
    log(cache.describe())
    return cache


# ---- batches of cached clips --------------------------------------------------------------------


@dataclass
class CachedBatch(Batch):
    """``calib.Batch`` + the teacher's view of every example, aligned with ``targets``."""

    encoder_out: torch.Tensor | None = None  # (B, n_ctx, d) float32
    topk_logp: torch.Tensor | None = None  # (B, L-1, k); 0 where targets == IGNORE
    topk_ids: torch.Tensor | None = None  # (B, L-1, k) int64
    hidden: torch.Tensor | None = None  # (B, n_layers + 1, n_ctx, d) float32

    def to(self, device) -> CachedBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return CachedBatch(**moved)


def collate_cached(items: list[TeacherItem], pad_id: int) -> CachedBatch:
    base = collate([it.calib_example() for it in items], pad_id)
    k = items[0].topk_ids.shape[-1]
    shape = (*base.targets.shape, k)
    logp, ids = torch.zeros(shape), torch.zeros(shape, dtype=torch.long)
    for row, it in enumerate(items):
        n = it.topk_ids.shape[0]
        logp[row, it.n_prefix - 1 : it.n_prefix - 1 + n] = it.topk_logp.float()
        ids[row, it.n_prefix - 1 : it.n_prefix - 1 + n] = it.topk_ids.long()
    hidden = torch.stack([it.hidden.float() for it in items]) if all(it.hidden is not None for it in items) else None
    enc = torch.stack([it.encoder_out.float() for it in items])
    assert bool(((base.targets != IGNORE).sum(1) == torch.tensor([it.topk_ids.shape[0] for it in items])).all())
    return CachedBatch(base.features, base.inputs, base.targets, enc, logp, ids, hidden)
