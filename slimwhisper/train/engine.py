"""The training engine on Hugging Face ``accelerate``: one loop for every recovery method.

* **Devices**: CPU by default (``TrainConfig.device="cpu"``); ``device="auto"`` lets accelerate
  pick (CUDA when present). Several processes / GPUs and bf16 come through ``accelerate launch``
  (``accelerate launch --num_processes 2 --mixed_precision bf16 .venv/bin/slimwhisper recover
  ... --device auto``). Data parallelism is done by hand, not by wrapping the model in DDP
  (recovery calls the decoder alone, or single encoder layers, which DDP's forward hooks would
  miss): each process takes its share ``batch[rank::world]`` of the global batch, and after the
  backward the gradients are summed across processes with one all-reduce, weighted by the
  number of examples each process saw, so W processes follow the same trajectory as one process
  with the whole batch (exactly, for per-example-mean losses).
* **Determinism / resume**: the data order is a pure function of (seed, step) (a seeded
  permutation per epoch), and torch is re-seeded from (seed, step, rank) before every step, so a
  run resumed from a checkpoint at step s repeats steps s+1.. exactly; the checkpoint holds the
  trained tensors, AdamW and scheduler state (``checkpoint.py``).
* **Stops**: ``max_seconds`` (``--max-minutes``) and SIGTERM finish the current step, write a
  checkpoint (when a folder is given) and stop; SIGTERM then raises ``TrainInterrupted`` telling
  the user to run the same command with ``--resume``.
* **Schedule**: AdamW (Loshchilov & Hutter 2019), linear warm-up over ``warmup`` x steps, then
  linear decay to zero; gradient clipping; ``after_step(lr, step)`` (a proximal operator) under
  ``no_grad`` after every optimizer step.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from slimwhisper.errors import UserError
from slimwhisper.train.checkpoint import (
    Checkpointing,
    latest_state,
    open_folder,
    save_state,
)

if TYPE_CHECKING:
    from slimwhisper.train.loop import TrainConfig


class TrainError(UserError, ValueError):
    """Bad training options or data; the message lists every problem."""


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken
    planned_steps: int
    losses: list[float]  # total loss per step (what was minimised)
    logs: list[dict[str, float]] = field(default_factory=list)  # per step, e.g. {"ce": .., "kl": ..}
    seconds: float = 0.0
    stopped_early: bool = False  # the max_seconds budget ran out

    def to_dict(self) -> dict:
        first, last = (self.losses[0], self.losses[-1]) if self.losses else (None, None)
        return {"steps": self.steps, "planned_steps": self.planned_steps, "first_loss": first, "last_loss": last,
                "seconds": round(self.seconds, 2), "stopped_early": self.stopped_early}  # fmt: skip



class TrainInterrupted(UserError):
    """Training stopped by SIGTERM; a checkpoint (if configured) holds the last complete step."""


def batch_indices(n: int, size: int, seed: int, step: int) -> list[int]:
    """Indices of global batch ``step``: epoch e = a permutation seeded by (seed, e); the last short batch kept."""
    per_epoch = math.ceil(n / size)
    epoch, i = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[i * size : (i + 1) * size]


def lr_factor(step: int, total: int, warmup: float) -> float:
    w = round(warmup * total)
    if w and step < w:
        return (step + 1) / (w + 1)
    return max(0.0, 1.0 - (step - w) / max(1, total - w))


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # AcceleratorState is a process-wide singleton: a second run in the same process (the library
    # API, IMP rounds, a test session) would silently keep the first run's mixed precision when
    # this one names none, and raise when it names another. Start each run from its own config;
    # the PartialState (the process group under `accelerate launch`) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    kwargs = {"cpu": config.device == "cpu"}
    if config.mixed_precision is not None:
        kwargs["mixed_precision"] = resolve_precision(config)
    return Accelerator(**kwargs)


def resolve_precision(config: TrainConfig) -> str | None:
    """``auto``: bf16 where the device multiplies in bf16 natively, else no (fp32); other values as given."""
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if config.device != "cpu" and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_bf16() else "no"


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16: AMD Zen 4, Intel Cooper Lake; AMX: Sapphire Rapids).

    There bf16 autocast made one tiny.en distillation step 1.5x faster than fp32
    (``experiments/train_step_speed.py``); elsewhere oneDNN emulates bf16 and it is slower.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private but stable since 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@contextmanager
def _sigterm_flag():
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(_signum, _frame):
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync_grads(acc, params: list[torch.nn.Parameter], weight: float) -> float:
    """sum_r w_r g_r / sum_r w_r over processes (g_r: the gradient of process r's local mean loss)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    ref = grads[0]
    flat = torch.cat([g.reshape(-1).float() * weight for g in grads] + [torch.tensor([weight], device=ref.device)])
    flat = acc.reduce(flat, reduction="sum")
    total = float(flat[-1])
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = (flat[offset : offset + n] / total).view_as(p).to(p.dtype)
        offset += n
    return total


def run_training(
    model: torch.nn.Module,
    examples: Sequence,
    config: TrainConfig,
    *,
    collate_fn: Callable[[list], object],
    loss_fn: Callable,
    params: list[torch.nn.Parameter] | None = None,
    after_step: Callable[..., None] | None = None,
    progress: bool = True,
    label: str = "train",
    checkpoint: Checkpointing | None = None,
    state_hooks: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    from slimwhisper.progress import progress_bar

    if len(examples) == 0:
        raise TrainError("training needs at least 1 example, got 0")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise TrainError("no trainable parameters: every parameter has requires_grad=False")
    acc = make_accelerator(config)
    world, rank = acc.num_processes, acc.process_index
    if config.mixed_precision == "auto" and acc.is_main_process:
        log(f"mixed precision auto: {acc.mixed_precision} on {acc.device.type}")
    if acc.mixed_precision == "bf16" and acc.device.type == "cpu" and not cpu_has_bf16() and acc.is_main_process:
        log("mixed precision bf16 on a CPU without AVX512-BF16 or AMX: autocast emulates it, so steps are slower "
            "than fp32 here; leave --mixed-precision out")  # fmt: skip
    if config.batch_size < world:
        raise TrainError(f"train.batch_size {config.batch_size} is smaller than the {world} processes: raise it")
    model.to(acc.device)
    total = config.total_steps(len(examples))
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, config.warmup))
    names = {id(p): n for n, p in model.named_parameters()}
    result = TrainResult(0, total, [])
    elapsed_before = 0.0
    state = None
    if checkpoint is not None:
        state = open_folder(checkpoint) if acc.is_main_process else None
        acc.wait_for_everyone()
        if not acc.is_main_process and checkpoint.resume:
            state = latest_state(checkpoint.folder)
    if state is not None:
        with torch.no_grad():
            for p in params:
                p.copy_(state["params"][names[id(p)]].to(p.device, p.dtype))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        result.steps, result.losses, result.logs = state["step"], state["losses"], state["logs"]
        elapsed_before = state.get("seconds", 0.0)
        if state_hooks is not None:
            state_hooks[1](state.get("extra") or {})
        if acc.is_main_process:
            log(f"resumed from {checkpoint.folder} at step {result.steps} of {total}")

    def snapshot() -> dict:
        return {"params": {names[id(p)]: p.detach().cpu().clone() for p in params}, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "step": result.steps, "losses": list(result.losses),
                "logs": list(result.logs), "seconds": elapsed_before + time.perf_counter() - start,
                "extra": state_hooks[0]() if state_hooks is not None else None}  # fmt: skip

    def write_checkpoint() -> None:
        if checkpoint is not None and acc.is_main_process:
            save_state(checkpoint.folder, result.steps, snapshot(), log)
        acc.wait_for_everyone()

    start = time.perf_counter()
    model.train()
    stop_reason = None
    with _threads(config.threads), _sigterm_flag() as term, progress_bar(total, label, enabled=progress and acc.is_main_process) as bar:
        if result.steps:
            bar.advance(result.steps)
        while result.steps < total:
            step = result.steps
            budget = config.max_seconds is not None and elapsed_before + time.perf_counter() - start > config.max_seconds
            flags = torch.tensor([float(term["set"]), float(budget)], device=acc.device)
            if world > 1:
                flags = acc.reduce(flags, reduction="sum")
            if flags[0] > 0 or flags[1] > 0:
                stop_reason = "sigterm" if flags[0] > 0 else "max_seconds"
                break
            torch.manual_seed(config.seed * 7919 + step * 104_729 + rank)
            idx = batch_indices(len(examples), config.batch_size, config.seed, step)[rank::world]
            lr = sched.get_last_lr()[0]
            opt.zero_grad(set_to_none=True)
            if idx:
                batch = collate_fn([examples[i] for i in idx])
                batch = batch.to(acc.device) if hasattr(batch, "to") else batch
                with acc.autocast():
                    loss, logs = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise TrainError(f"loss became {float(loss)} at step {step}; lower train.lr (now {config.lr})")
                acc.backward(loss)
                local = float(loss.detach())
            else:
                local, logs = 0.0, {}
            if world > 1:
                total_w = _sync_grads(acc, params, float(len(idx)))
                pair = acc.reduce(torch.tensor([local * len(idx)], device=acc.device), reduction="sum")
                local = float(pair[0]) / total_w
            if acc.scaler is not None:
                acc.scaler.unscale_(opt)
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            if acc.scaler is not None:
                acc.scaler.step(opt)
                acc.scaler.update()
            else:
                opt.step()
            sched.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(lr, step)
            result.steps += 1
            result.losses.append(local)
            result.logs.append(logs)
            bar.advance(loss=f"{local:.3f}", lr=f"{lr:.2e}")
            if checkpoint is not None and ((checkpoint.every and result.steps % checkpoint.every == 0) or result.steps == total):
                write_checkpoint()  # also the last step: a later stage of the job may resume after it
    if stop_reason is not None:
        write_checkpoint()
    model.zero_grad(set_to_none=True)
    model.eval()
    result.seconds = elapsed_before + time.perf_counter() - start
    result.stopped_early = stop_reason == "max_seconds"
    if stop_reason == "sigterm":
        where = f"checkpoint saved in {checkpoint.folder}; run the same command with --resume to continue" if checkpoint else \
            "no --checkpoint-dir was given, so nothing was saved"
        raise TrainInterrupted(f"training stopped by SIGTERM after step {result.steps} of {total}: {where}")
    return result
