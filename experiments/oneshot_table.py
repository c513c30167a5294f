"""One-shot structured pruning with reconstruction: the table of issue 9.

For each model and target (fraction of encoder+decoder LAYER parameters removed), every variant
(score x allocation x reconstruction) is pruned with ``slimwhisper.compress.prune`` from the same
calibration set, saved as a slim folder and measured:

* parameters counted from the saved ``model.safetensors`` (tensor shapes in its header);
* FLOPs from the spec: one 30 s window (encoder + cross-attention K/V) and one decoded token
  (at self-attention context 32);
* WER (Whisper's English normaliser) on ljspeech/dev (97), librispeech-clean-mini (14) and
  speechocean762/eval.tsv (120 utterances by 24 speakers never used for calibration);
* looping: utterances whose decoding hit the token cap (224 per window), never hidden;
* decoding: ``--decodings greedy`` (default: plain greedy, no fallback: loops stay visible) and/or
  ``whisper`` (openai-whisper's transcribe defaults, what ``slimwhisper eval`` runs: temperature
  fallback, no-speech rule, timestamps); the ``whisper`` columns are keyed ``SET@whisper``;
* calibration seconds: labelling + statistics + scores + allocation + re-fit (``PruneResult.seconds``).

Calibration uses only ``--calib`` (default ljspeech/train.tsv; several sets are drawn from together;
evaluation sets are refused).

    .venv/bin/python experiments/oneshot_table.py --models tiny.en --targets 0.25 0.35 --threads 2

Prints a Markdown table; JSON rows are rewritten after every row (``--resume`` skips rows it has,
and only evaluates the sets and decodings a row lacks, from its saved folder).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
EVALS = {
    "ljdev": DATA / "ljspeech" / "dev.tsv",
    "clean": DATA / "librispeech-clean-mini",
    "so762": DATA / "speechocean762" / "eval.tsv",
}
CAP = 224  # DecodeConfig.max_new_tokens
DECODINGS = ("greedy", "whisper")


def eval_key(data_key: str, decoding: str) -> str:
    return data_key if decoding == "greedy" else f"{data_key}@{decoding}"


@dataclass(frozen=True)
class Variant:
    name: str
    score: str | None  # None: dense
    threshold: str = "sensitivity"
    method: str = "none"
    sequential: bool = True
    target: str = "layer"  # ReconstructConfig.target
    refit_all: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("dense", None),
        Variant("fisher-global", "fisher", "global"),  # what `prune --score fisher --threshold global` did
        Variant("fisher-global-lstsq", "fisher", "global", "lstsq"),
        Variant("flap-sens-bias", "flap", "sensitivity", "bias", False),
        Variant("wanda-sens-lstsq", "wanda", "sensitivity", "lstsq"),
        Variant("obs-sens-lstsq-dense", "obs", "sensitivity", "lstsq", False),
        Variant("obs-sens-lstsq", "obs", "sensitivity", "lstsq"),
        Variant("obs-sens-lstsq-stream", "obs", "sensitivity", "lstsq", target="stream"),
        Variant("obs-sens-lstsq-stream-all", "obs", "sensitivity", "lstsq", target="stream", refit_all=True),
        Variant("obs-sens-lstsq-all", "obs", "sensitivity", "lstsq", refit_all=True),
        Variant("obs-sens-anchored-dense", "obs", "sensitivity", "anchored", False),
        Variant("obs-sens-anchored", "obs", "sensitivity", "anchored"),
    )
}


def file_params(folder: Path) -> dict[str, int]:
    import math

    from safetensors import safe_open

    out = {"total": 0, "layers": 0}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            n = math.prod(f.get_slice(name).get_shape())
            out["total"] += n
            out["layers"] += n if name.startswith(("model.encoder.layers.", "model.decoder.layers.")) else 0
    return out


def wer_of(loaded, data: Path, limit: int | None, decoding: str = "greedy") -> dict:
    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    decode = DecodeConfig(max_new_tokens=CAP) if decoding == "greedy" else DecodeConfig.whisper(max_new_tokens=CAP)
    t0 = time.perf_counter()
    res = evaluate(TorchTranscriber(loaded, decode), load_dataset(str(data), limit=limit), progress=False)
    looping = sum(u.tokens >= CAP for u in res.utterances)  # after fallback, for "whisper"
    return {"wer": res.wer, "looping": looping, "n": res.n, "s": time.perf_counter() - t0, "decoding": decoding,
            "fallbacks": sum(u.fallbacks for u in res.utterances)}


def evaluate_row(row: dict, load, args) -> bool:
    """Add the (set, decoding) results ``row`` lacks; True when something was added. ``load()``
    gives the model, called only when something is missing (a resumed table loads nothing)."""
    missing = [(k, d) for d in args.decodings for k in args.evals if eval_key(k, d) not in row]
    loaded = load() if missing else None
    for key, dec in missing:
        row[eval_key(key, dec)] = wer_of(loaded, EVALS[key], args.eval_limit, dec)
    return bool(missing)


def prune_variant(model: str, v: Variant, target: float, args, out: Path):
    from slimwhisper.compress import AllocConfig, CalibConfig, PruneConfig, ScoreConfig, prune
    from slimwhisper.compress.reconstruct_config import ReconstructConfig
    from slimwhisper.compress.sensalloc import SensAllocConfig
    from slimwhisper.compress.stats import StatsConfig

    alloc = AllocConfig(threshold=v.threshold, target_params=target, sensitivity=SensAllocConfig(n=args.sens_n))
    config = PruneConfig(
        model=model, out=str(out), force=True, score=ScoreConfig(v.score), alloc=alloc,
        calib=CalibConfig(args.calib[0], n=args.calib_n, seed=args.seed, more_data=tuple(args.calib[1:]), label_free=args.label_free or None,
                          pack_seconds=args.pack_seconds, timestamps=args.calib_timestamps),
        reconstruct=ReconstructConfig(v.method, damp=args.damp, sequential=v.sequential, damp_grid=tuple(args.damp_grid),
                                      target=v.target, refit_all=v.refit_all),
        stats=StatsConfig(cache_dir=args.cache, stride=args.stride),
    )  # fmt: skip
    return prune(config, progress=False, log=lambda m: print("   ", m.replace("\n", "\n    "), flush=True))


def run(args, rows, save) -> None:
    from slimwhisper.models import load_model
    from slimwhisper.models.slimdir import save_slim

    for model in args.models:
        dense_dir = Path(args.work) / model / "dense"
        if not (dense_dir / "model.safetensors").is_file():
            save_slim(load_model(model), dense_dir, force=True)
        dense_files = file_params(dense_dir)
        for target in args.targets:
            for name in args.variants:
                v = VARIANTS[name]
                t = 0.0 if v.score is None else target
                damp = None if v.score is None else ("cv" if args.damp_grid else args.damp)
                folder = dense_dir if v.score is None else Path(args.work) / model / (
                    f"{name}-{int(100 * target)}" + ("" if damp == 0.01 else f"-damp{damp}")
                    + ("-labelfree" if args.label_free else "") + (f"-{args.tag}" if args.tag else ""))
                have = [r for r in rows if r["model"] == model and r["variant"] == name and r["target"] == t
                        and r.get("damp", 0.01) == (damp or 0.01) and r.get("tag", "") == ("" if v.score is None else args.tag)]  # fmt: skip
                if have:
                    if evaluate_row(have[0], lambda f=folder: load_model(str(f)), args):
                        save(rows)
                        print(f"[{model}] {name} @ {t:.0%}: " + line(have[0]), flush=True)
                    continue
                chosen_damps = None
                if v.score is None:
                    loaded, seconds, calib_s = load_model(model), {}, 0.0
                else:
                    print(f"[{model}] {name} @ {target:.0%}", flush=True)
                    res = prune_variant(model, v, target, args, folder)
                    loaded, seconds = res.loaded, res.seconds
                    chosen_damps = (res.reconstruction or {}).get("damp")
                    calib_s = sum(seconds.get(k, 0.0) for k in ("calibration", "score", "reconstruct"))
                files = file_params(folder)
                fl = loaded.spec.flops(tokens=1, context=32)
                row = {"model": model, "variant": name, "target": t, "score": v.score, "threshold": v.threshold,
                       "reconstruct": v.method, "sequential": v.sequential, "params_file": files["total"],
                       "removed_pct_layers": 100 * (1 - files["layers"] / dense_files["layers"]),
                       "removed_pct_total": 100 * (1 - files["total"] / dense_files["total"]),
                       "gflops_window": (fl["encoder"] + fl["cross_kv"]) / 1e9, "mflops_token": fl["decoder_token"] / 1e6,
                       "calib_s": calib_s, "seconds": seconds, "calib_n": args.calib_n, "damp": damp,
                       "damp_grid": args.damp_grid, "damp_chosen": chosen_damps, "label_free": args.label_free,
                       "tag": "" if v.score is None else args.tag, "calib": [Path(c).name if Path(c).suffix else c for c in args.calib],
                       "sens_n": args.sens_n, "pack_seconds": args.pack_seconds, "calib_timestamps": args.calib_timestamps,
                       "seed": args.seed}  # fmt: skip
                evaluate_row(row, lambda m=loaded: m, args)
                rows.append(row)
                save(rows)
                print(f"[{model}] {name} @ {t:.0%}: " + line(row), flush=True)


def result_keys(rows: list[dict]) -> list[str]:
    """The (set, decoding) columns any row has, sets in EVALS order, greedy first."""
    return [eval_key(k, d) for k in EVALS for d in DECODINGS if any(eval_key(k, d) in r for r in rows)]


def line(r: dict) -> str:
    wers = " ".join(f"{k} {100 * r[k]['wer']:.2f}% (loop {r[k]['looping']})" for k in result_keys([r]))
    return f"removed {r['removed_pct_layers']:.1f}% of layer params, {wers}, calib {r['calib_s']:.0f} s"


def markdown(rows: list[dict]) -> str:
    keys = result_keys(rows)
    head = "| model | variant | score | alloc | re-fit | params (file) | layer params removed | GFLOPs/window | MFLOPs/token | "
    head += " | ".join(f"WER {k} (looping)" for k in keys) + " | calib s |"
    lines = [head, "|" + "---|" * (10 + len(keys))]
    for r in rows:
        refit = r["reconstruct"] + ("" if r["reconstruct"] == "none" else (" seq" if r["sequential"] else " dense-Gram"))
        refit += "" if r.get("damp") in (None, 0.01) or r["reconstruct"] == "none" else f" damp {r['damp']}"
        cells = [r["model"], r["variant"] + (f" [{r['tag']}]" if r.get("tag") else ""), r["score"] or "-", r["threshold"] if r["score"] else "-", refit if r["score"] else "-",
                 f"{r['params_file']:,}", f"{r['removed_pct_layers']:.1f}%", f"{r['gflops_window']:.2f}", f"{r['mflops_token']:.1f}"]  # fmt: skip
        cells += [f"{100 * r[k]['wer']:.2f}% ({r[k]['looping']}/{r[k]['n']})" if k in r else "-" for k in keys]
        cells.append(f"{r['calib_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny.en"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.25, 0.35])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--calib", nargs="+", default=[str(DATA / "ljspeech" / "train.tsv")],
                   help="calibration sets, drawn from together (never an evaluation set)")
    p.add_argument("--calib-n", type=int, default=256)
    p.add_argument("--sens-n", type=int, default=8, help="held-out examples (windows when packed) for the sensitivity KL")
    p.add_argument("--pack-seconds", type=float, default=None, help="pack the drawn calibration clips into windows of this length")
    p.add_argument("--calib-timestamps", type=float, default=0.0,
                   help="share of the (pseudo-labelled) calibration examples teacher-forced in timestamp mode")
    p.add_argument("--stride", type=int, default=4, help="encoder frame stride for the Grams (1 = all 1500)")
    p.add_argument("--label-free", action="store_true",
                   help="teacher-force the dense model's own transcripts, not the references, in the calibration decoder")
    p.add_argument("--damp-grid", type=float, nargs="*", default=[],
                   help="choose each block's damping among these by 2-fold cross-validation (rows then say 'cv')")
    p.add_argument("--damp", type=float, default=0.01, help="re-fit damping (anchored: strength of the pull to the dense weights)")
    p.add_argument("--evals", nargs="+", default=list(EVALS), choices=list(EVALS))
    p.add_argument("--decodings", nargs="+", default=["greedy"], choices=list(DECODINGS),
                   help="greedy: no fallback (loops visible); whisper: openai-whisper's defaults (fallback, no-speech)")
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / "build" / "oneshot_table"))
    p.add_argument("--cache", default=str(ROOT / "build" / "oneshot_table" / "stats-cache"))
    p.add_argument("--json", default=str(ROOT / "build" / "oneshot_table.json"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="calibration draw (give each draw its own --tag)")
    p.add_argument("--tag", default="", help="names a calibration setting (folder suffix and resume key), e.g. mixed-sens32")
    args = p.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if args.resume and out.is_file() else []

    def save(rows: list[dict]) -> None:
        tmp = out.with_name(out.name + ".tmp")
        meta = {k: v for k, v in vars(args).items() if k not in ("json",)}
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        tmp.replace(out)

    run(args, rows, save)
    print(markdown(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
