"""Recovery that fits a CPU (issue 10): one-shot + reconstruction, + KD, + layer-wise + e2e KD, IMP, TSPAR.

Rows (all at ``--target`` of the encoder+decoder layer parameters):

* ``dense``;
* ``oneshot``: ``prune(PruneConfig(score=fisher, threshold=global, reconstruct=lstsq sequential))``,
  calibrated on ``--calib-n`` utterances of ljspeech/train;
* ``oneshot+kd``: ``recover --method distill`` (top-k KL + CE on the dense pseudo-labels, from the
  teacher cache; decoder-side on cached encoder outputs when the encoder is unchanged);
* ``oneshot+layerwise``: ``recover --method layerwise`` (``--layerwise-steps`` per-layer MSE, then the
  same ``--steps`` of end-to-end KD with the encoder-output L2);
* ``imp``: ``--rounds`` rounds of magnitude pruning + KD, ``--steps`` in total;
* ``tspar`` (only with ``--tspar``): sparse-group-lasso stage 1 with the converging schedules, then two
  passes; trained with CE on the same cached windows and dense pseudo-labels as the KD rows (no KL).
* ``soup`` (only with ``--soup-of W1 W2 ...``): the weight average (``slimwhisper average``) of the
  ``oneshot+kd`` (or ``oneshot+layerwise``) models of earlier runs in those ``--work`` folders (same
  start, other ``--seed`` or step counts);
  its CPU minutes are the members' sum.

The teacher cache (n = ``--n`` clips drawn from ljspeech/train, librispeech-train-unlabeled,
asterisk-prompts and speechocean762/train, never an evaluation set) is built once and shared.
Columns: parameters (from the saved file), layer parameters removed, GFLOPs per 30 s window,
WER + looping (token cap hit) on ljspeech/dev, librispeech-clean-mini, speechocean762/eval
(each ``--eval-limit`` utterances, or all), and CPU minutes (process CPU time of the row's
pruning + training, the shared teacher cache counted separately).

    .venv/bin/python experiments/recovery_at_scale.py --threads 2 --steps 30 --n 48 --eval-limit 30

Writes JSON after every row (``--resume`` skips rows already there) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

from oneshot_table import DECODINGS, EVALS, evaluate_row, file_params, result_keys  # same folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
TRAIN = [DATA / "ljspeech" / "train.tsv", DATA / "librispeech-train-unlabeled", DATA / "asterisk-prompts",
         DATA / "speechocean762" / "train.tsv"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--target", type=float, default=0.35)
    ap.add_argument("--calib-n", type=int, default=256)
    ap.add_argument("--n", type=int, default=48, help="training clips in the teacher cache")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--layerwise-steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tspar", action="store_true")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", nargs="*", default=["dense", "oneshot", "oneshot+kd", "oneshot+layerwise", "imp"])
    ap.add_argument("--work", default=str(ROOT / "build" / "recovery_at_scale"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--soup-of", nargs="*", default=[], help="row 'soup': average the oneshot+kd (or oneshot+layerwise) models of these "
                    "--work folders (the same recovery with other --seed); its CPU min is their sum")
    ap.add_argument("--pruned", default=None, help="start from this one-shot slim folder instead of pruning (row 'oneshot')")
    ap.add_argument("--teacher-cache", default=None, help="teacher cache root (default: WORK/teacher-cache)")
    ap.add_argument("--cached-only", action="store_true", help="train only on the drawn clips already in the cache")
    ap.add_argument("--alpha", type=float, default=0.5, help="KD: weight of the pseudo-label CE")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--encoder-l2", type=float, default=1.0)
    ap.add_argument("--train-embeddings", action="store_true", help="also train the (tied) embeddings")
    ap.add_argument("--cached-stem", action="store_true",
                    help="oneshot+layerwise: end-to-end stage from the cached layer-0 input (conv stem frozen)")
    ap.add_argument("--timestamps", type=float, default=0.0,
                    help="share of the training windows distilled on the teacher's timestamped transcript")
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed (data order, masking); the clips drawn and the teacher cache do not change")
    ap.add_argument("--pack-seconds", type=float, default=None,
                    help="join consecutive drawn clips into windows of up to S s (several clips per encoder pass)")
    ap.add_argument("--decodings", nargs="+", default=["greedy"], choices=list(DECODINGS),
                    help="greedy: no fallback (loops visible); whisper: openai-whisper's defaults (fallback, no-speech)")
    ap.add_argument("--evals", nargs="+", default=list(EVALS), choices=list(EVALS))
    ap.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "auto"],
                    help="bf16: autocast the training forward (fp32 master weights); auto: bf16 where native")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from slimwhisper.compress import (
        AllocConfig,
        CalibConfig,
        PruneConfig,
        ScoreConfig,
        prune,
    )
    from slimwhisper.compress.reconstruct_config import ReconstructConfig
    from slimwhisper.compress.stats import StatsConfig
    from slimwhisper.models import load_model
    from slimwhisper.models.slimdir import save_slim
    from slimwhisper.train.imp import ImpConfig, run_imp
    from slimwhisper.train.loop import TrainConfig
    from slimwhisper.train.recover import RecoverConfig, recover, save_recovered
    from slimwhisper.train.teacher import TeacherConfig, build_cache
    from slimwhisper.train.trainset import select_utterances

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_json = work / "rows.json"
    rows: dict[str, dict] = json.loads(out_json.read_text()) if args.resume and out_json.exists() else {}
    dense = load_model(args.model)
    train = TrainConfig(str(TRAIN[0]), more_data=tuple(map(str, TRAIN[1:])), n=args.n, steps=args.steps,
                        batch_size=args.batch, lr=args.lr, threads=args.threads, warmup=args.warmup,
                        pack_seconds=args.pack_seconds, seed=args.seed,
                        mixed_precision=args.mixed_precision)  # fmt: skip

    def done(name: str, folder: Path, loaded, cpu_s: float, **info) -> None:
        files, dense_files = file_params(folder), file_params(work / "dense")
        fl = loaded.spec.flops(tokens=1, context=32)
        row = {"params_file": files["total"], "removed_pct_layers": 100 * (1 - files["layers"] / dense_files["layers"]),
               "gflops_window": (fl["encoder"] + fl["cross_kv"]) / 1e9, "cpu_min": cpu_s / 60, "folder": str(folder), **info}  # fmt: skip
        evaluate_row(row, lambda: loaded, args)
        rows[name] = row
        out_json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"{name}: " + " ".join(f"{k} {100 * row[k]['wer']:.2f}% (loop {row[k]['looping']})" for k in result_keys([row]))
              + f" removed {row['removed_pct_layers']:.1f}% cpu {row['cpu_min']:.1f} min  load {os.getloadavg()[0]:.1f}", flush=True)

    if not (work / "dense" / "model.safetensors").is_file():
        save_slim(dense, work / "dense", force=True)
    if "dense" in args.rows and "dense" not in rows:
        done("dense", work / "dense", dense, 0.0)
    pruned_dir = Path(args.pruned) if args.pruned else work / "oneshot"
    if args.pruned and "oneshot" in args.rows and "oneshot" not in rows:
        done("oneshot", pruned_dir, load_model(str(pruned_dir)), 0.0, source=str(pruned_dir))
    elif not (pruned_dir / "model.safetensors").is_file() or ("oneshot" in args.rows and "oneshot" not in rows):
        c0 = time.process_time()
        pc = PruneConfig(model=args.model, out=str(pruned_dir), force=True, score=ScoreConfig("fisher"),
                         alloc=AllocConfig(threshold="global", target_params=args.target),
                         calib=CalibConfig(str(TRAIN[0]), n=args.calib_n), reconstruct=ReconstructConfig("lstsq"),
                         stats=StatsConfig(cache_dir=str(work / "stats-cache")))  # fmt: skip
        res = prune(pc, progress=False, loaded=copy.deepcopy(dense), log=lambda m: print("   ", m, flush=True))
        done("oneshot", pruned_dir, res.loaded, time.process_time() - c0, seconds=res.seconds)

    if args.soup_of and "soup" not in rows:  # weight average of runs from the same start (train/soup.py)
        from slimwhisper.train.soup import SoupConfig, average_models, save_soup

        members, cpu_min = [], 0.0
        for w in args.soup_of:  # each member: the row its --work folder trained
            done_rows = json.loads((Path(w) / "rows.json").read_text())
            r = next(r for r in ("oneshot+kd", "oneshot+layerwise") if r in done_rows)
            members.append(Path(w) / r.replace("+", "_"))
            cpu_min += done_rows[r]["cpu_min"]
        sc = SoupConfig(tuple(map(str, members)))
        soup = average_models(sc)
        done("soup", save_soup(soup, sc, work / "soup", force=True), soup, cpu_min * 60, members=[str(m) for m in members])
    items, cache_cpu = [], 0.0
    if {"oneshot+kd", "oneshot+layerwise", "imp"} & set(args.rows) or args.tspar:  # the rows that train
        c0 = time.process_time()
        utts = select_utterances([str(p) for p in TRAIN], args.n, 0, pack_seconds=args.pack_seconds)
        tconf = TeacherConfig(hidden_states="oneshot+layerwise" in args.rows, timestamps=args.timestamps)
        root = Path(args.teacher_cache) if args.teacher_cache else work / "teacher-cache"
        if args.cached_only:  # the clips a previous build already wrote (same weights + settings)
            from slimwhisper.train.teacher import audio_hash, cache_key, weights_hash

            folder = root / cache_key(weights_hash(dense.model), tconf)
            utts = [u for u in utts if (folder / f"{audio_hash(u.audio)[:32]}.pt").is_file()]
            print(f"--cached-only: {len(utts)} of {args.n} drawn clips are cached", flush=True)
        cache = build_cache(dense, utts, root, tconf, progress=False)
        items = [cache[i] for i in range(len(cache))]
        cache_cpu = time.process_time() - c0
        print(f"teacher cache: {cache.describe()}, {cache_cpu / 60:.1f} CPU min", flush=True)

    for name, method in (("oneshot+kd", "distill"), ("oneshot+layerwise", "layerwise")):
        if name not in args.rows or name in rows:
            continue
        c0 = time.process_time()
        cfg = RecoverConfig(method, train, layerwise_steps=args.layerwise_steps, distill_alpha=args.alpha,
                            distill_temperature=args.temperature, encoder_l2=args.encoder_l2,
                            freeze_embeddings=not args.train_embeddings, timestamps=args.timestamps,
                            cached_stem=args.cached_stem and method == "layerwise")
        loaded = recover(load_model(str(pruned_dir)), cfg, teacher=dense, examples=items, progress=False)
        folder = save_recovered(loaded, work / name.replace("+", "_"), cfg, force=True)
        done(name, folder, loaded, time.process_time() - c0, train=loaded.extra["recovery"]["result"],
             cache_cpu_min=cache_cpu / 60)  # fmt: skip
    if "imp" in args.rows and "imp" not in rows:
        c0 = time.process_time()
        ic = ImpConfig(model=args.model, out=str(work / "imp"), train=train, target_params=args.target, rounds=args.rounds, force=True)
        loaded = run_imp(ic, copy.deepcopy(dense), dense, items, progress=False)
        done("imp", work / "imp", loaded, time.process_time() - c0, rounds=loaded.extra["imp"], cache_cpu_min=cache_cpu / 60)
    if args.tspar and "tspar" not in rows:
        from slimwhisper.train.tspar import TsparConfig, run_tspar

        c0 = time.process_time()
        tc = TsparConfig(model=args.model, out=str(work / "tspar"), force=True, target_params=args.target, train=train)
        # the KD rows' windows and dense pseudo-labels (CE only: TSPAR's stage 1 has no KL term)
        examples = [i.calib_example() for i in items]
        res = run_tspar(tc, progress=False, loaded=copy.deepcopy(dense), examples=examples)
        done("tspar", work / "tspar", res.loaded, time.process_time() - c0, train=res.training.to_dict())

    for name, r in rows.items():  # rows from an earlier run (--resume): the sets / decodings they lack
        if r.get("folder") and Path(r["folder"]).is_dir() and evaluate_row(r, lambda f=r["folder"]: load_model(f), args):
            out_json.write_text(json.dumps(rows, indent=2) + "\n")

    print(f"\n{args.model} at {args.target:.0%} of layer parameters; {args.steps} steps x batch {args.batch}, "
          f"n={args.n} clips, eval limit {args.eval_limit}, {args.threads} threads\n")  # fmt: skip
    keys = result_keys(list(rows.values()))
    head = "| row | params (file) | layer params removed | GFLOPs/window | " + " | ".join(f"WER {k} (looping)" for k in keys)
    print(head + " | CPU min |\n|" + "---|" * (5 + len(keys)))
    for name, r in rows.items():
        cells = [name, f"{r['params_file']:,}", f"{r['removed_pct_layers']:.1f}%", f"{r['gflops_window']:.2f}"]
        cells += [f"{100 * r[k]['wer']:.2f}% ({r[k]['looping']}/{r[k]['n']})" if k in r else "-" for k in keys]
        print("| " + " | ".join(cells) + f" | {r['cpu_min']:.1f} |")


if __name__ == "__main__":
    main()
