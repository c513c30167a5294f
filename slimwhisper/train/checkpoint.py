"""Training checkpoints: a folder of complete steps, written atomically, checked against the job.

Layout of a checkpoint folder::

    .slimwhisper-output.json    {"kind": "checkpoints"}
    job.json                    the whole job's config (what ``--resume`` compares)
    latest.json                 {"step": N, "dir": "step-0000N"}: the newest COMPLETE checkpoint
    step-0000N/state.pt         trained tensors, AdamW + scheduler state, step, losses, extra state

A step folder is written into a temp sibling and renamed in (``outputs.output_dir``), then
``latest.json`` is replaced (``outputs.write_json``), then older step folders are removed. A
failure at any point (a full disk, a kill) leaves the previous ``latest.json`` and its folder as
they were: the previous checkpoint stays valid. Random state needs no saving: every step seeds
torch from (seed, step, rank), and the data order is a pure function of (seed, step).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from slimwhisper.errors import UserError
from slimwhisper.outputs import (
    MARKER,
    OutputKind,
    check_output,
    output_dir,
    register_output_kind,
    write_json,
)

# Settings that change how a job runs, not what it computes: not compared on --resume.
NOT_COMPARED = ("max_seconds", "threads", "checkpoint_every", "device", "mixed_precision", "force", "out", "eval_data", "eval_limit")

register_output_kind(OutputKind("checkpoints", "a training checkpoint folder", lambda p: (p / "job.json").is_file()))
register_output_kind(OutputKind("checkpoint", "one training checkpoint", lambda p: (p / "state.pt").is_file()))


class CheckpointError(UserError, ValueError):
    """A checkpoint folder cannot be used (another job's, missing, damaged)."""


@dataclass(frozen=True)
class Checkpointing:
    folder: Path
    every: int | None = None  # steps between checkpoints (None: only on SIGTERM / --max-minutes)
    resume: bool = False
    job: dict | None = None  # the config that --resume must match
    force: bool = False  # without resume: replace an earlier checkpoint folder


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict = {}
    for k, v in json.loads(json.dumps(d)).items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def differences(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[-1] not in NOT_COMPARED)
    return [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def open_folder(ck: Checkpointing, *, inputs=()) -> dict | None:
    """Prepare ``ck.folder``; with ``resume`` return the newest state (None when there is none yet)."""
    folder = Path(ck.folder)
    if ck.resume and (folder / "job.json").is_file():
        old = json.loads((folder / "job.json").read_text())
        diff = differences(old, ck.job or {})
        if diff:
            raise CheckpointError(f"--resume: {folder} holds checkpoints of a job with other settings; use the same "
                                  "settings, or a new --checkpoint-dir", diff)  # fmt: skip
        return latest_state(folder)
    if folder.is_dir() and any(folder.iterdir()):
        check_output(folder, "checkpoints", force=ck.force, inputs=inputs, option="--checkpoint-dir")
        shutil.rmtree(folder)  # allowed: an earlier checkpoint folder, with --force
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / MARKER, {"kind": "checkpoints"})
    write_json(folder / "job.json", ck.job or {})
    return None


def latest_state(folder: Path) -> dict | None:
    try:
        latest = json.loads((Path(folder) / "latest.json").read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CheckpointError(f"{folder}/latest.json is damaged ({exc}); delete the folder to start over") from exc
    path = Path(folder) / latest["dir"] / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete {folder} to start over") from exc


def save_state(folder: Path, step: int, state: dict, log=print) -> bool:
    """Write step ``step`` atomically; False (and the previous checkpoint kept) when the disk refuses."""
    folder = Path(folder)
    name = f"step-{step:07d}"
    try:
        with output_dir(folder / name, "checkpoint", force=True) as tmp:
            torch.save(state, tmp / "state.pt")
        write_json(folder / "latest.json", {"step": step, "dir": name})
    except OSError as exc:
        prev = _latest_step(folder)
        kept = f"the checkpoint of step {prev} stays valid" if prev is not None else "no earlier checkpoint exists"
        log(f"warning: checkpoint at step {step} not written ({exc.strerror or exc}); {kept}")
        return False
    for old in folder.glob("step-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return True


def _latest_step(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None
