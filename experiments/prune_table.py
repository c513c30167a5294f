"""One-shot structured pruning table: WER vs parameters removed, counted from the SAVED files.

For each model (tiny.en, base): calibrate once on ``--calib`` (teacher-forced loss, batch 1),
score every head / FFN neuron / layer once with Fisher (OBD saliency) and magnitude, then for
each variant allocate, physically remove, save a slim folder, count the parameters in its
model.safetensors (tensor shapes from the header) and measure WER on ``--eval``. No fine-tuning:
these are one-shot figures, the starting point recovery training would improve on.

    python experiments/prune_table.py --models tiny.en base --threads 2 \\
        --calib ../shared/data/ljspeech/train.tsv --calib-n 32 --eval ../shared/data/ljspeech/dev.tsv

Prints a Markdown table and writes JSON (rewritten after every row; ``--resume`` skips rows it has).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "ljspeech"


@dataclass(frozen=True)
class Variant:
    name: str
    score: str | None  # None: dense
    recipe: str | None  # a registered recipe supplying the AllocConfig


VARIANTS = (
    Variant("dense", None, None),
    Variant("dec-self-attn-50", "fisher", "dec-self-attn-50"),
    Variant("enc-last4-heads-50", "fisher", "enc-last4-heads-50"),
    Variant("global-30-fisher", "fisher", "global-30-fisher"),
    Variant("global-30-magnitude", "magnitude", "global-30-magnitude"),
    Variant("local-30-fisher", "fisher", "local-30-fisher"),
    Variant("local-30-magnitude", "magnitude", "local-30-magnitude"),
    Variant("drop-enc-2", "fisher", "drop-enc-2"),
)


def file_params(folder: Path) -> dict[str, int]:
    """Parameters stored in a slim folder's model.safetensors, by part (shapes from the header)."""
    import math

    from safetensors import safe_open

    out = {"total": 0, "layers": 0}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            n = math.prod(f.get_slice(name).get_shape())
            out["total"] += n
            if name.startswith(("model.encoder.layers.", "model.decoder.layers.")):
                out["layers"] += n
    return out


def wer_of(loaded, eval_data: str, limit: int | None) -> tuple[dict, float]:
    """Corpus WER plus what explains a WER above 100%: runaway (looping) outputs.

    ``runaway``: utterances whose hypothesis has more than twice the reference's words (+5);
    ``median_utt_wer``: the median per-utterance WER, which a few loops cannot dominate.
    """
    import statistics

    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.text import score
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    start = time.perf_counter()
    result = evaluate(TorchTranscriber(loaded, DecodeConfig()), load_dataset(eval_data, limit=limit), progress=False)
    utts = result.utterances
    runaway = sum(len(u.hyp.split()) > 2 * len(u.ref.split()) + 5 for u in utts)
    median = statistics.median(score([u.ref], [u.hyp]).wer for u in utts)
    return {"wer": result.wer, "runaway": runaway, "median_utt_wer": median, "n": len(utts)}, time.perf_counter() - start


def run_model(model_name: str, args, rows: list[dict], save) -> None:
    import torch

    from slimwhisper.compress import CalibConfig, GroupSpace, ScoreConfig, allocate, apply_plan, enumerate_groups, get_recipe
    from slimwhisper.compress.calib import prepare
    from slimwhisper.compress.scores import score_groups
    from slimwhisper.models import load_model
    from slimwhisper.models.slim import spec_from_model
    from slimwhisper.models.slimdir import save_slim

    by_name = {v.name: v for v in VARIANTS}  # run in the order --variants gives
    todo = [by_name[n] for n in args.variants if not any(r["model"] == model_name and r["variant"] == n for r in rows)]
    if not todo:
        return
    dense = load_model(model_name)
    t0 = time.perf_counter()
    examples = prepare(dense, CalibConfig(args.calib, n=args.calib_n, seed=0))
    groups = enumerate_groups(dense.model, GroupSpace({"head", "neuron", "layer"}))
    names = sorted({v.score for v in todo if v.score})
    cache = Path(args.work) / model_name / f"scores-n{args.calib_n}.pt"
    cached = torch.load(cache) if cache.is_file() else {}
    if cached.get("groups") != [g.name for g in groups] or not set(names) <= set(cached.get("scores", {})):
        scores = score_groups(dense.model, groups, [ScoreConfig(n) for n in names], examples, progress=not args.quiet)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"groups": [g.name for g in groups], "scores": scores}, cache)
    else:
        scores = cached["scores"]
    calib_s = time.perf_counter() - t0
    print(f"[{model_name}] calibration + scores on {len(examples)} utterances: {calib_s:.0f} s", flush=True)
    dense_dir = Path(args.work) / model_name / "dense"
    save_slim(dense, dense_dir, force=True)
    dense_files = file_params(dense_dir)
    for v in todo:
        loaded, fraction = dense, 0.0
        out_dir = dense_dir
        if v.score is not None:
            loaded = copy.deepcopy(dense)
            recipe = get_recipe(v.recipe)
            allocation = allocate(groups, scores[v.score], recipe.alloc, loaded.spec)
            record = apply_plan(loaded.model, allocation.plan)
            loaded.model.slim_record = record
            loaded.spec = spec_from_model(loaded.model)
            out_dir = Path(args.work) / model_name / v.name
            configs = {"prune": {"score": ScoreConfig(v.score).to_dict(), "alloc": recipe.alloc.to_dict(), "recipe": v.recipe,
                                 "calib": {"data": args.calib, "n": args.calib_n, "seed": 0}}}  # fmt: skip
            save_slim(loaded, out_dir, record=record, configs=configs, force=True)
            fraction = allocation.fraction
        files = file_params(out_dir)
        stats, eval_s = wer_of(loaded, args.eval, args.eval_limit)
        wer = stats["wer"]
        row = {
            "model": model_name,
            "variant": v.name,
            "score": v.score,
            "params_file": files["total"],
            "layer_params_file": files["layers"],
            "removed_file": dense_files["total"] - files["total"],
            "removed_pct_total": 100 * (1 - files["total"] / dense_files["total"]),
            "removed_pct_layers": 100 * (1 - files["layers"] / dense_files["layers"]),
            "alloc_fraction": fraction,
            "spec": loaded.spec.summary(),
            "wer": wer,
            "runaway": stats["runaway"],
            "median_utt_wer": stats["median_utt_wer"],
            "eval_n": stats["n"],
            "eval_s": eval_s,
            "calib_n": len(examples),
            "eval": args.eval,
            "eval_limit": args.eval_limit,
        }
        rows.append(row)
        save(rows)
        print(f"[{model_name}] {v.name}: removed {row['removed_pct_layers']:.1f}% of layer params, WER {100 * wer:.2f}% ({eval_s:.0f} s)", flush=True)
        del loaded


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | variant | score | params in file | removed (of all) | removed (of enc+dec layers) | WER | runaway utts | median utt WER |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['score'] or '-'} | {r['params_file']:,} | "
            f"{r['removed_pct_total']:.1f}% | {r['removed_pct_layers']:.1f}% | {100 * r['wer']:.2f}% | "
            + (f"{r['runaway']}/{r['eval_n']} | {100 * r['median_utt_wer']:.1f}% |" if "runaway" in r else "- | - |")
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    p.add_argument("--calib", default=str(DATA / "train.tsv"))
    p.add_argument("--calib-n", type=int, default=32)
    p.add_argument("--eval", default=str(DATA / "dev.tsv"))
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / "build" / "prune_table"), help="folder for the pruned models")
    p.add_argument("--json", default=str(ROOT / "build" / "prune_table.json"))
    p.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], choices=[v.name for v in VARIANTS])
    p.add_argument("--resume", action="store_true", help="keep rows already in --json and skip them")
    p.add_argument("--quiet", action="store_true")
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
        meta = {"calib": args.calib, "calib_n": args.calib_n, "eval": args.eval, "eval_limit": args.eval_limit, "threads": args.threads}
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        tmp.replace(out)

    for model_name in args.models:
        run_model(model_name, args, rows, save)
    print(markdown(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
