"""Recovery training after structured pruning: the pruned model keeps its shapes, its weights adapt.

Methods (``RECOVERY`` registry, name -> handler):

* ``finetune`` — full fine-tuning of every weight of the pruned model (teacher-forced CE).
* ``lora``     — LoRA adapters (Hu et al. 2021, via ``peft``) on the pruned, uneven linear layers
  (q/k/v/out_proj, fc1, fc2), trained with CE, then MERGED (W <- W + (alpha/r) B A), so the
  result is again a plain slim model of exactly the same spec and parameter count.
* ``distill``  — knowledge distillation from the dense teacher (Hinton et al. 2015), label-free,
  on the TEACHER CACHE (``teacher.py``): a * CE(dense pseudo-label) + (1 - a) * T^2 * KL to the
  cached top-k teacher log-probs (``distill.py``). When the student's encoder equals the
  teacher's (only decoder heads/FFN/layers pruned) the decoder trains on the cached dense
  encoder outputs and the encoder is skipped (``decoder_only``; the speed-up per step is
  measured and printed); otherwise end to end, with ``encoder_l2`` x the relative L2 to the
  cached encoder output.
* ``layerwise`` — layer-wise encoder distillation, then a short end-to-end KD: every pruned
  encoder layer first learns to map the cached dense input of its source layer to that layer's
  dense output (relative MSE, ``layerwise_steps`` at ``layerwise_lr``), then ``distill`` end to
  end (encoder-output L2 + top-k KL + CE) for ``train.steps``.

A vocabulary-pruned student (``--vocab``) trains on the teacher's targets respelled in its kept
tokens (``respell.py``); every method works in the model's ids.

The spec never changes during recovery: ``recover`` checks it before returning. ``save_recovered``
writes a slim folder whose ``pruning.json`` keeps the pruning record and appends the recovery
config to the configs that made the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimwhisper.compress.calib import IGNORE, Batch, CalibExample
from slimwhisper.train.checkpoint import Checkpointing
from slimwhisper.train.distill import kd_loss, layerwise_loss
from slimwhisper.train.loop import TrainConfig, TrainResult, ce_loss, pad_id_of, train
from slimwhisper.train.recover_config import PEFT_HINT, TEACHER_METHODS, RecoverConfig, RecoverError, RecoverMethod
from slimwhisper.train.respell import in_model_ids
from slimwhisper.train.teacher import TeacherConfig, build_cache, collate_cached

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

EMBEDDINGS = ("embed_tokens", "embed_positions", "proj_out")
STEM = ("model.encoder.conv1.", "model.encoder.conv2.")


def trainable(model, config: RecoverConfig, *, skip_encoder: bool = False, skip_stem: bool = False) -> list[torch.nn.Parameter]:
    """The parameters a full-weight method trains: all, less the encoder (decoder-side recovery) or
    its conv stem (``cached_stem``) and, with ``freeze_embeddings``, less the token/positional
    embeddings and the tied projection."""
    return [p for name, p in model.named_parameters()  # named_parameters lists a tied tensor once
            if not (skip_encoder and name.startswith("model.encoder."))
            and not (skip_stem and name.startswith(STEM))
            and not (config.freeze_embeddings and any(part in EMBEDDINGS for part in name.split(".")))]


@dataclass
class Context:
    """What a recovery handler gets."""

    loaded: LoadedModel
    config: RecoverConfig
    teacher: LoadedModel | None
    examples: Sequence  # CalibExample (finetune, lora) or teacher.TeacherItem (distill, layerwise)
    progress: bool = True
    checkpoint: Checkpointing | None = None
    log: Callable[[str], None] = print
    pad_id: int = field(init=False)
    info: dict = field(default_factory=dict)  # extra figures for the saved summary (speed-up, stages)

    def __post_init__(self) -> None:
        self.pad_id = pad_id_of(self.loaded)

    def run(self, stage: str | None = None, config: TrainConfig | None = None, **kwargs) -> TrainResult:
        label = f"recover ({self.config.method.value}{' ' + stage if stage else ''})"
        ck = self.checkpoint
        if ck is not None and stage is not None:
            ck = dataclasses.replace(ck, folder=Path(ck.folder) / stage)
        if self.config.method in TEACHER_METHODS:
            kwargs.setdefault("collate_fn", lambda items: collate_cached(items, self.pad_id))
        return train(self.loaded.model, self.examples, config or self.config.train, pad_id=self.pad_id,
                     progress=self.progress, label=label, checkpoint=ck, log=self.log, **kwargs)  # fmt: skip


RECOVERY: dict[RecoverMethod, Callable[[Context], TrainResult]] = {}


def register_recovery(method: RecoverMethod):
    def wrap(fn):
        if method in RECOVERY:
            raise ValueError(f"recovery method {method.value!r} registered twice")
        RECOVERY[method] = fn
        return fn

    return wrap


@register_recovery(RecoverMethod.FINETUNE)
def _finetune(ctx: Context) -> TrainResult:
    return ctx.run(loss_fn=ce_loss, params=trainable(ctx.loaded.model, ctx.config))


@register_recovery(RecoverMethod.LORA)
def _lora(ctx: Context) -> TrainResult:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RecoverError(PEFT_HINT) from exc
    model, cfg = ctx.loaded.model, ctx.config
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), lora_dropout=0.0, bias="none")
    # The adapters are injected into ``model``'s own modules, so training ``model`` trains them;
    # peft freezes every base weight. Each adapter takes its layer's CURRENT (pruned) shape.
    wrapped = get_peft_model(model, lora)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    try:
        result = ctx.run(loss_fn=ce_loss, params=adapters)
    finally:  # merged even when training stops with an error: never leave adapters in the model
        merged = wrapped.merge_and_unload()  # W + (alpha / r) B A; plain nn.Linear again
    if merged is not model:
        raise RecoverError("peft returned a different model object after merging; this peft version is not supported")
    if hasattr(model, "peft_config"):
        del model.peft_config
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, True))
    return result


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float, alpha: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """a * CE + (1 - a) * T^2 * KL(p_teacher^T || p_student^T) over the counted target positions."""
    mask = batch.targets != IGNORE
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    ce = torch.nn.functional.cross_entropy(s, batch.targets[mask])
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s / temperature, -1), torch.log_softmax(t / temperature, -1), log_target=True, reduction="batchmean"
    )
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def encoder_unchanged(student: LoadedModel, teacher: LoadedModel) -> bool:
    """True when the student's encoder has the teacher's shapes and weights (only the decoder was pruned)."""
    a, b = student.model.model.encoder.state_dict(), teacher.model.model.encoder.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _decoder_only(ctx: Context) -> bool:
    wanted = ctx.config.decoder_only
    same = ctx.teacher is not None and encoder_unchanged(ctx.loaded, ctx.teacher)
    if wanted is True and not same:
        raise RecoverError("decoder_only: the pruned model's encoder differs from the teacher's, so the cached dense "
                           "encoder outputs are not its own; leave --decoder-only off")  # fmt: skip
    return same if wanted is None else wanted


def _step_seconds(model, batch, loss_fn, params) -> float:
    import time

    flags = {id(p): p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    t0 = time.perf_counter()
    loss, _ = loss_fn(model, batch)
    loss.backward()
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(flags[id(p)])
    return seconds


def measure_speedup(ctx: Context, loss_dec) -> dict:
    """One forward+backward on the first batch: cached encoder outputs vs the encoder run and trained."""
    import os

    model = ctx.loaded.model
    batch = collate_cached([ctx.examples[i] for i in range(min(len(ctx.examples), ctx.config.train.batch_size))], ctx.pad_id)
    full = kd_loss(ctx.config.distill_temperature, ctx.config.distill_alpha)
    model.train()
    with_encoder = _step_seconds(model, batch, full, list(model.parameters()))
    cached = _step_seconds(model, batch, loss_dec, [p for n, p in model.named_parameters() if not n.startswith("model.encoder.")])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = {"step_s_with_encoder": round(with_encoder, 3), "step_s_cached_encoder": round(cached, 3),
           "speedup": round(with_encoder / cached, 2), "loadavg_1m": round(load, 2)}  # fmt: skip
    ctx.log(f"decoder-side recovery: the encoder is unchanged, so it is skipped (cached dense encoder outputs): "
            f"one step {cached:.2f} s vs {with_encoder:.2f} s with the encoder forward+backward "
            f"({out['speedup']:.1f}x faster; same-run ratio, load average {load:.2f})")  # fmt: skip
    return out


def _kd(ctx: Context, decoder_only: bool, stage: str | None = None) -> TrainResult:
    cfg, model = ctx.config, ctx.loaded.model
    stem = cfg.cached_stem and not decoder_only
    loss_fn = kd_loss(cfg.distill_temperature, cfg.distill_alpha, decoder_only=decoder_only,
                      encoder_l2=0.0 if decoder_only else cfg.encoder_l2, augment=cfg.spec_augment and not decoder_only,
                      cached_stem=stem)  # fmt: skip
    if decoder_only:
        if cfg.spec_augment:
            ctx.log("spec_augment: not applied (the encoder is skipped; its input is never seen)")
        ctx.info["decoder_side"] = measure_speedup(ctx, loss_fn)
    params = trainable(model, cfg, skip_encoder=decoder_only, skip_stem=stem)
    return ctx.run(stage, loss_fn=loss_fn, params=params)


@register_recovery(RecoverMethod.DISTILL)
def _distill(ctx: Context) -> TrainResult:
    return _kd(ctx, _decoder_only(ctx))


def pruned_encoder_pairs(student: LoadedModel, teacher: LoadedModel) -> list[tuple[int, int]]:
    """(student layer j, its source layer s) for every encoder layer whose shape differs from the dense one."""
    dense = teacher.spec.encoder
    return [(j, ls.source_index) for j, ls in enumerate(student.spec.encoder) if ls != dense[ls.source_index]]


@register_recovery(RecoverMethod.LAYERWISE)
def _layerwise(ctx: Context) -> TrainResult:
    cfg, model = ctx.config, ctx.loaded.model
    pairs = pruned_encoder_pairs(ctx.loaded, ctx.teacher)
    if ctx.examples[0].hidden is None:
        raise RecoverError("layer-wise distillation needs per-layer hidden states in the teacher cache (hidden_states=True)")
    if pairs:
        stage1 = dataclasses.replace(cfg.train, steps=cfg.layerwise_steps, epochs=None, lr=cfg.layerwise_lr, grad_clip=None)
        params = [p for j, _ in pairs for p in model.model.encoder.layers[j].parameters()]
        first = ctx.run("layerwise", stage1, loss_fn=layerwise_loss(pairs), params=params)
        ctx.info["layerwise"] = {"layers": [j for j, _ in pairs], **first.to_dict(), "last_logs": first.logs[-1] if first.logs else {}}
        ctx.log(f"layer-wise: encoder layers {[j for j, _ in pairs]}, {first.steps} steps, relative MSE "
                f"{first.losses[0]:.4f} -> {first.losses[-1]:.4f} (sum over layers)")  # fmt: skip
    else:
        ctx.log("layer-wise: no encoder layer is pruned; only the end-to-end distillation runs")
    return _kd(ctx, decoder_only=False, stage="e2e")


def check_teacher(student: LoadedModel, teacher: LoadedModel | None) -> None:
    if teacher is None:
        return
    s, t = student.model.config, teacher.model.config
    vmap = getattr(student.model, "slim_vocab", None)  # vocabulary-pruned: compare the source vocabulary
    vocab = vmap.source_vocab if vmap is not None else s.vocab_size
    problems = [f"{name}: student {getattr(s, name)} vs teacher {getattr(t, name)}"
                for name in ("num_mel_bins", "d_model") if getattr(s, name) != getattr(t, name)]
    if vocab != t.vocab_size:
        problems.insert(0, f"vocab_size: student {vocab}{' before vocabulary pruning' if vmap else ''} vs teacher {t.vocab_size}")
    if getattr(teacher.model, "slim_vocab", None) is not None:
        problems.append("the teacher's vocabulary is pruned; pass the unpruned dense model")
    if problems:
        raise RecoverError("the teacher does not match the pruned model (pass the dense model it was pruned from)", problems)


def default_cache_dir() -> Path:
    from slimwhisper.models.cache import cache_root

    return cache_root() / "teacher"


def teacher_examples(teacher: LoadedModel, config: RecoverConfig, cache_dir: str | Path | None = None, *,
                     progress: bool = True, log: Callable[[str], None] = print):  # fmt: skip
    """The teacher cache over ``config.train``'s utterances (built where missing), label-free."""
    from slimwhisper.train.trainset import select_utterances

    t = config.train
    utts = select_utterances(t.datasets, t.n, t.seed, log, pack_seconds=t.pack_seconds)
    settings = TeacherConfig(top_k=config.top_k, hidden_states=config.method is RecoverMethod.LAYERWISE,
                             timestamps=config.timestamps)
    return build_cache(teacher, utts, cache_dir or default_cache_dir(), settings, log=log, progress=progress)


def labelled_examples(loaded: LoadedModel, config: RecoverConfig, teacher: LoadedModel | None,
                      log: Callable[[str], None] = print) -> list[CalibExample]:  # fmt: skip
    """Finetune / LoRA data: references where present; the DENSE teacher labels the rest (never the student)."""
    from slimwhisper.compress.calib import prepare
    from slimwhisper.train.trainset import select_utterances

    t = config.train
    utts = select_utterances(t.datasets, t.n, t.seed, log, pack_seconds=t.pack_seconds)
    unlabelled = [u.id for u in utts if t.label_free is True or not (u.text or "").strip()]
    if unlabelled and teacher is None:
        raise RecoverError(f"{len(unlabelled)} of {len(utts)} training utterances have no reference text (e.g. "
                           f"{unlabelled[:3]}) and no teacher labels them; pass --teacher (the dense model) or "
                           "labelled data: the pruned model's own transcripts would train it on its mistakes")  # fmt: skip
    if unlabelled:
        log(f"{len(unlabelled)} of {len(utts)} training utterances labelled with the dense teacher's greedy transcript")
    return prepare(teacher or loaded, t.calib(), utterances=utts)


def recover(
    loaded: LoadedModel,
    config: RecoverConfig,
    teacher: LoadedModel | None = None,
    *,
    examples: Sequence | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    checkpoint: Checkpointing | None = None,
    log: Callable[[str], None] = print,
) -> LoadedModel:
    """Train ``loaded`` (pruned) IN PLACE with ``config.method``; same spec and parameter count after.

    ``teacher`` (the dense model) is required for ``distill``/``layerwise`` (their data is the
    teacher cache in ``cache_dir``) and, for finetune/LoRA, labels the training utterances that
    have no reference (without a teacher those are refused). ``examples`` bypasses data loading
    (tests: ``CalibExample`` or ``teacher.TeacherItem`` as the method needs). ``checkpoint``
    saves every N steps / on SIGTERM and resumes. The summary is left in ``loaded.extra["recovery"]``.
    """
    from slimwhisper.models.slim import spec_from_model

    check_teacher(loaded, teacher)
    if config.method in TEACHER_METHODS and teacher is None:
        raise RecoverError(f"{config.method.value} needs the dense teacher: pass teacher= (CLI: --teacher tiny.en or the dense folder)")
    spec = spec_from_model(loaded.model)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    if examples is None:
        if config.method in TEACHER_METHODS:
            examples = teacher_examples(teacher, config, cache_dir, progress=progress, log=log)
        else:
            examples = labelled_examples(loaded, config, teacher, log)
    examples = in_model_ids(loaded, examples, log)  # vocabulary-pruned: targets respelled in kept tokens
    ctx = Context(loaded, config, teacher, examples, progress, checkpoint, log)
    result = RECOVERY[config.method](ctx)
    after = spec_from_model(loaded.model)
    if after != spec or sum(p.numel() for p in loaded.model.parameters()) != n_params:
        raise RecoverError(f"recovery method {config.method.value!r} changed the model's shapes; this is a bug")
    loaded.spec = after
    summary = {**result.to_dict(), **ctx.info}
    loaded.extra["recovery"] = {"config": config.to_dict(), "result": summary, "losses": result.losses}
    return loaded


def save_recovered(loaded: LoadedModel, out: str | Path, config: RecoverConfig, *, force: bool = False) -> Path:
    """Save as a slim folder: pruning record kept, recovery config appended to the configs."""
    from slimwhisper.models.slimdir import appended_configs, save_slim

    summary = loaded.extra.get("recovery", {}).get("result")
    configs = appended_configs(loaded, "recover", {**config.to_dict(), "result": summary})  # recovered twice: both kept
    return save_slim(loaded, Path(out), record=getattr(loaded.model, "slim_record", None), configs=configs, force=force)
