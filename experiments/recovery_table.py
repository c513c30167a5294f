"""Recovery after pruning, and TSPAR, on tiny.en: parameters (from the SAVED files) and WER.

Rows: dense; one-shot pruned (Fisher, global threshold, ``--target`` of the encoder+decoder layer
parameters, calibrated on ``--train``); the pruned model + finetune / + LoRA (merged) / + distill
(dense teacher), each trained ``--steps`` AdamW steps of batch ``--batch`` on ``--n`` utterances of
``--train``; TSPAR (sparse-group-lasso fine-tuning of the dense model for the same steps, then
two-pass pruning to the same budget) and TSPAR + the same finetune recovery. WER on ``--eval`` (greedy, Whisper-normalised).

    python experiments/recovery_table.py --threads 2 --steps 40 \\
        --train ../shared/data/ljspeech/train.tsv --eval ../shared/data/ljspeech/dev.tsv

Prints a Markdown table; writes JSON after every row (``--resume`` skips rows already there).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from prune_table import file_params  # same folder: parameters counted from model.safetensors

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "ljspeech"


def wer(loaded, data: str, limit: int | None) -> float:
    from slimwhisper.evaluate import wer_of

    return wer_of(loaded, data, limit=limit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--train", default=str(DATA / "train.tsv"))
    ap.add_argument("--eval", default=str(DATA / "dev.tsv"))
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--target", type=float, default=0.3, help="fraction of encoder+decoder layer parameters to remove")
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--n", type=int, default=128, help="training utterances")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lambda-group", type=float, default=1.0)
    ap.add_argument("--tspar-lr", type=float, default=1e-3, help="stage-1 lr (also the proximal step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "build" / "recovery_table"))
    ap.add_argument("--json", default=None, help="default: WORK/recovery_table.json")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--methods", nargs="*", default=["finetune", "lora", "distill", "tspar", "tspar+finetune"])
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from slimwhisper.compress import AllocConfig, CalibConfig, PruneConfig, ScoreConfig, prune
    from slimwhisper.train.recover import recover, save_recovered
    from slimwhisper.train.recover_config import DEFAULT_LR, RecoverConfig, RecoverMethod
    from slimwhisper.train.loop import TrainConfig, prepare_examples
    from slimwhisper.train.tspar import TsparConfig, run_tspar
    from slimwhisper.models import load_model

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.json) if args.json else work / "recovery_table.json"
    rows: dict[str, dict] = json.loads(out_json.read_text()) if args.resume and out_json.exists() else {}

    def done(name: str, folder: Path | None, loaded, **info) -> None:
        t = time.perf_counter()
        w = wer(loaded, args.eval, args.eval_limit)
        params = file_params(folder) if folder else {"total": loaded.spec.params(), "layers": None}
        rows[name] = {"wer": w, "params": params, "folder": str(folder) if folder else None, "eval_s": round(time.perf_counter() - t, 1), **info}
        out_json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"{name}: WER {100 * w:.2f}%  params {params['total']:,}  {info}", flush=True)

    dense = load_model(args.model)
    if "dense" not in rows:
        dense_dir = work / "dense"
        if not dense_dir.exists():
            from slimwhisper.models.slimdir import save_slim

            save_slim(dense, dense_dir)
        done("dense", dense_dir, dense)
    pruned_dir = work / "pruned"
    if "pruned" not in rows:
        t = time.perf_counter()
        config = PruneConfig(
            model=args.model, out=str(pruned_dir), score=ScoreConfig("fisher"), force=True,
            alloc=AllocConfig(threshold="global", target_params=args.target),
            calib=CalibConfig(args.train, n=args.calib_n),
        )  # fmt: skip
        result = prune(config, progress=False, loaded=copy.deepcopy(dense))
        done("pruned", pruned_dir, result.loaded, seconds=round(time.perf_counter() - t, 1))
    train_cfg = dict(data=args.train, n=args.n, steps=args.steps, batch_size=args.batch, threads=args.threads)
    examples = None
    for method in args.methods:
        name = method if method.startswith("tspar") else f"pruned+{method}"
        if name in rows:
            continue
        if examples is None:  # features + reference tokens, shared by every method
            examples = prepare_examples(dense, TrainConfig(**train_cfg))
        t = time.perf_counter()
        folder = work / name.replace("+", "_")
        if method == "tspar":
            cfg = TsparConfig(
                model=args.model, out=str(folder), force=True, lambda_group=args.lambda_group, target_params=args.target,
                train=TrainConfig(**train_cfg, lr=args.tspar_lr),
            )  # fmt: skip
            res = run_tspar(cfg, progress=False, loaded=copy.deepcopy(dense), examples=examples)
            info = {"pass1": len(res.stage2.pass1), "pass2": len(res.stage2.pass2), "train": res.training.to_dict()}
            loaded = res.loaded
        else:  # recovery of the one-shot pruned model, or of TSPAR's ("tspar+finetune")
            m = RecoverMethod(method.split("+")[-1])
            start = work / "tspar" if method.startswith("tspar") else pruned_dir
            cfg = RecoverConfig(m, TrainConfig(**train_cfg, lr=DEFAULT_LR[m]))
            loaded = recover(load_model(str(start)), cfg, teacher=dense, examples=examples, progress=False)
            save_recovered(loaded, folder, cfg, force=True)
            info = {"train": loaded.extra["recovery"]["result"]}
        done(name, folder, loaded, seconds=round(time.perf_counter() - t, 1), **info)

    dense_layers = rows["dense"]["params"]["layers"]
    print(f"\n{args.model}, WER on {args.eval} (limit {args.eval_limit}), {args.steps} steps x batch {args.batch}, {args.threads} threads\n")
    print("| model | params (file) | enc+dec layer params | layers removed | WER | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        p = r["params"]
        removed = 100 * (1 - p["layers"] / dense_layers) if p.get("layers") else 0.0
        secs = r.get("train", {}).get("seconds", "")
        print(f"| {name} | {p['total']:,} | {p['layers']:,} | {removed:.1f}% | {100 * r['wer']:.2f}% | {secs} |")


if __name__ == "__main__":
    main()
