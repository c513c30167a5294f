"""The accelerate-based engine: exact resume after a kill, SIGTERM, disk full, other-config refusal,
and two CPU processes (gloo) following the same trajectory as one."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimwhisper.train.checkpoint import CheckpointError, Checkpointing
from slimwhisper.train.engine import (
    TrainInterrupted,
    batch_indices,
    lr_factor,
    run_training,
)
from slimwhisper.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


class Batch:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def to(self, device):
        return Batch(self.x.to(device), self.y.to(device))


def data(n=10):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(6, generator=g), torch.randn(2, generator=g)) for _ in range(n)]


def collate(items):
    return Batch(torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]))


def loss_fn(model, batch):
    # dropout makes the step's random state matter: resume must repeat it exactly
    loss = torch.nn.functional.mse_loss(model(batch.x), batch.y)
    return loss, {"mse": float(loss.detach())}


def mlp(dropout=0.3):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(dropout), torch.nn.GELU(), torch.nn.Linear(16, 2))


def run(model, config, **kw):
    return run_training(model, data(), config, collate_fn=collate, loss_fn=loss_fn, progress=False, log=lambda _m: None, **kw)


CFG = TrainConfig("unused", steps=9, batch_size=4, lr=1e-2, warmup=0.2, seed=5)


def test_schedule_and_order_are_pure_functions_of_the_step():
    assert batch_indices(10, 4, 0, 3) == batch_indices(10, 4, 0, 3) and len(batch_indices(10, 4, 0, 2)) == 2
    assert sorted(i for s in range(3) for i in batch_indices(10, 4, 0, s)) == list(range(10))  # one epoch
    assert lr_factor(0, 10, 0.2) < lr_factor(1, 10, 0.2) < lr_factor(2, 10, 0.2) == 1.0 and lr_factor(10, 10, 0.2) == 0.0


def test_bf16_on_cpu_autocasts_the_forward_and_keeps_fp32_weights():
    # --mixed-precision bf16 on a CPU (1.5x per step on AVX512-BF16, experiments/train_step_speed.py):
    # the matmuls run in bf16 inside the engine's autocast, the weights and the update stay fp32
    seen = []

    def spy(model, batch):
        seen.append(model[0](batch.x).dtype)
        return loss_fn(model, batch)

    model, reference = mlp(dropout=0.0), mlp(dropout=0.0)
    res = run_training(model, data(), dataclasses.replace(CFG, mixed_precision="bf16"), collate_fn=collate, loss_fn=spy,
                       progress=False, log=lambda _m: None)  # fmt: skip
    ref = run(reference, CFG)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the same trajectory up to bf16 rounding (8 mantissa bits: ~0.4% per product), not the same bits
    assert res.losses != ref.losses and res.losses == pytest.approx(ref.losses, rel=0.05)


def test_bf16_on_a_cpu_without_native_bf16_says_it_is_slower(monkeypatch):
    import slimwhisper.train.engine as engine

    said = []
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    run_training(mlp(), data(), dataclasses.replace(CFG, mixed_precision="bf16", steps=1), collate_fn=collate,
                 loss_fn=loss_fn, progress=False, log=said.append)  # fmt: skip
    assert any("without AVX512-BF16" in m for m in said)
    said.clear()
    run_training(mlp(), data(), dataclasses.replace(CFG, steps=1), collate_fn=collate, loss_fn=loss_fn, progress=False,
                 log=said.append)  # fmt: skip
    assert not any("AVX512" in m for m in said)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    import slimwhisper.train.engine as engine

    auto = dataclasses.replace(CFG, mixed_precision="auto")
    for native, want in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(engine, "cpu_has_bf16", lambda n=native: n)
        assert engine.resolve_precision(auto) == want and engine.make_accelerator(auto).mixed_precision == want
    assert engine.resolve_precision(CFG) is None and engine.resolve_precision(dataclasses.replace(CFG, mixed_precision="no")) == "no"
    with pytest.raises(ValueError, match="no, bf16, fp16 or auto"):
        dataclasses.replace(CFG, mixed_precision="bfloat16")


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    reference = mlp()
    ref = run(reference, CFG)
    job = {"train": CFG.to_dict()}
    ck = Checkpointing(tmp_path / "ck", every=2, job=job)

    class Killed(Exception):
        pass

    def die(_lr, step):
        if step == 4:  # after step 5's update: the last checkpoint is step 4; nothing else is saved
            raise Killed

    with pytest.raises(Killed):
        run(mlp(), CFG, checkpoint=ck, after_step=die)
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["step"] == 4
    resumed = mlp()
    res = run(resumed, CFG, checkpoint=Checkpointing(tmp_path / "ck", every=2, resume=True, job=job))
    assert res.steps == ref.steps == 9 and res.losses == ref.losses
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_sigterm_saves_a_checkpoint_and_says_resume(tmp_path):
    job = {"train": CFG.to_dict()}

    def term(_lr, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainInterrupted, match="--resume"):
        run(mlp(), CFG, checkpoint=Checkpointing(tmp_path / "ck", job=job), after_step=term)
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["step"] == 3
    reference, resumed = mlp(), mlp()
    run(reference, CFG)
    run(resumed, CFG, checkpoint=Checkpointing(tmp_path / "ck", resume=True, job=job))
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_resume_refuses_another_config_naming_the_keys(tmp_path):
    run(mlp(), CFG, checkpoint=Checkpointing(tmp_path / "ck", every=3, job={"train": CFG.to_dict()}))
    other = TrainConfig("unused", steps=9, batch_size=4, lr=1e-3, warmup=0.2, seed=5, threads=1)
    with pytest.raises(CheckpointError) as err:
        run(mlp(), other, checkpoint=Checkpointing(tmp_path / "ck", resume=True, job={"train": other.to_dict()}))
    assert "train.lr: 0.01 -> 0.001" in str(err.value) and "threads" not in str(err.value)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import slimwhisper.train.checkpoint as C

    real, calls = C.torch.save, {"n": 0}

    def full(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first checkpoint (step 3) fits, the later ones do not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(C.torch, "save", full)
    logs = []
    run_training(mlp(), data(), CFG, collate_fn=collate, loss_fn=loss_fn, progress=False, log=logs.append,
                 checkpoint=Checkpointing(tmp_path / "ck", every=3, job={}))  # fmt: skip
    assert any("step 3 stays valid" in m for m in logs), logs
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["step"] == 3
    assert [p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith(("step-", ".step"))] == ["step-0000003"]
    state = C.latest_state(tmp_path / "ck")
    assert state["step"] == 3


SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_train_engine import CFG, data, collate, loss_fn, mlp, run_training
model = mlp()
res = run_training(model, data(), CFG, collate_fn=collate, loss_fn=loss_fn, progress=False, log=lambda m: None)
from accelerate import PartialState
if PartialState().is_main_process:
    torch.save({{"state": model.state_dict(), "losses": res.losses, "world": PartialState().num_processes}}, {out!r})
"""


@pytest.mark.slow  # two fresh interpreters + gloo: ~20 s idle, over a minute on a loaded machine
def test_two_cpu_processes_follow_the_single_process_trajectory(tmp_path):
    """Dropout off (two processes draw other masks than one); equal-size shards: equal up to float sums."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path / "out.pt")).replace("mlp()", "mlp(0.0)"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # accelerate launch runs ONE process on CPU (multi-CPU goes through mpirun); torchrun sets the same
    # RANK / WORLD_SIZE environment accelerate reads, and Accelerator(cpu=True) then joins a gloo group.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["world"] == 2
    single = mlp(0.0)
    ref = run(single, CFG)
    for a, b in zip(single.state_dict().values(), got["state"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got["losses"] == pytest.approx(ref.losses, rel=1e-5)
