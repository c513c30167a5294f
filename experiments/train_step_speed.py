"""One distillation step (forward + backward) in fp32, under bf16 autocast, and bf16 from the cached stem.

Recovery on a CPU is bound by these steps (issue 10: 400 steps of ~7 s each at 1 thread for tiny.en
at 35%). CPUs with AVX512-BF16 (AMD Zen 4, Intel Sapphire Rapids and later) run bf16 matmuls
through oneDNN at about twice the fp32 rate; the master weights, the optimizer and the losses stay
fp32 (``distill.kd_loss`` casts the logits to float before the softmaxes), only the matmul inputs
are rounded. This prints the per-step seconds of both (the median of ``--repeats`` steps after one
warm-up each, alternating fp32 / bf16 so that a change in machine load hits both), their ratio, the
thread count and the load average, as ``../shared/docs/benchmarking.md`` asks. Take the figure on
a quiet machine. The stem (two convolutions over 3,000 log-mel frames, never pruned) is trained by
default; ``bf16_stem_frozen`` freezes it (no weight gradients for the convolutions), and
``bf16_cached_stem`` (``RecoverConfig.cached_stem``) also skips its forward, starting the encoder
from the cache's dense layer-0 input (the cache must hold per-layer states, as ``layerwise`` builds it).

    .venv/bin/python experiments/train_step_speed.py --model PRUNED --cache TEACHER_CACHE_FOLDER --threads 1

``--cache`` is one key folder of a teacher cache (``ROOT/<weights>-<settings>``); the first
``--batch`` windows are used, so the token counts are real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model name or slim folder (the student)")
    ap.add_argument("--cache", required=True, help="a teacher cache key folder (holds teacher.json and *.pt)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    from slimwhisper.compress.calib import IGNORE
    from slimwhisper.models import load_model
    from slimwhisper.train.distill import kd_loss
    from slimwhisper.train.engine import cpu_has_bf16
    from slimwhisper.train.loop import pad_id_of
    from slimwhisper.train.teacher import collate_cached, load_item

    torch.set_num_threads(args.threads)
    folder = Path(args.cache)
    if not (folder / "teacher.json").is_file():
        raise SystemExit(f"{folder} is not a teacher cache key folder (no teacher.json); pass ROOT/<key>")
    key = folder.name
    files = sorted(folder.glob("*.pt"))[: args.batch]
    if len(files) < args.batch:
        raise SystemExit(f"{folder} holds {len(files)} cached windows; --batch {args.batch} needs as many")
    loaded = load_model(args.model)
    batch = collate_cached([load_item(f, key) for f in files], pad_id_of(loaded))
    model = loaded.model.train()
    stem_params = [*model.model.encoder.conv1.parameters(), *model.model.encoder.conv2.parameters()]

    def step(mode) -> float:
        dtype, stem = mode  # stem: "trained" (recover's default), "frozen", "cached" (RecoverConfig.cached_stem)
        for p in stem_params:
            p.requires_grad_(stem == "trained")
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()
        t0 = time.perf_counter()
        with ctx:
            loss, _ = kd_loss(2.0, 0.5, encoder_l2=1.0, cached_stem=stem == "cached")(model, batch)
        loss.backward()
        seconds = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        return seconds

    bf16 = torch.bfloat16
    modes = {"fp32": (None, "trained"), "bf16": (bf16, "trained"), "bf16_stem_frozen": (bf16, "frozen"),
             **({"bf16_cached_stem": (bf16, "cached")} if batch.hidden is not None else {})}  # fmt: skip
    times: dict[str, list[float]] = {m: [] for m in modes}
    load0 = os.getloadavg()[0]
    for mode in modes.values():
        step(mode)  # warm-up (oneDNN primitive creation)
    for _ in range(args.repeats):
        for name, mode in modes.items():
            times[name].append(step(mode))
    med = {m: statistics.median(t) for m, t in times.items()}
    tokens = int((batch.targets != IGNORE).sum())
    out = {"model": args.model, "batch": args.batch, "target_tokens": tokens, "threads": args.threads,
           "repeats": args.repeats, "step_s": {m: round(v, 3) for m, v in med.items()},
           "speedup_over_fp32": {m: round(med["fp32"] / v, 2) for m, v in med.items()},
           "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "native_bf16": cpu_has_bf16()}  # fmt: skip
    print(f"{args.model}: batch {args.batch} windows of 30 s, {tokens} target tokens, {args.threads} thread(s), "
          f"median of {args.repeats}: " + ", ".join(f"{m} {v:.2f} s/step ({med['fp32'] / v:.2f}x)" for m, v in med.items())
          + f"; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
