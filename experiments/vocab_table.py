"""Vocabulary pruning table (issue 12): dense vs vocabulary-pruned, torch and int8 bundle.

For each model and ``--max-vocab`` the English-pruned model is made with ``slimwhisper.compress``
(``PruneConfig(vocab=VocabConfig(...))``, the code behind ``slimwhisper prune --vocab en``),
saved as a slim folder and exported as an int8 bundle; the dense model is exported the same way.
Measured per row:

* vocabulary size and parameters (``ArchSpec.params()``, equal to the saved tensors);
* int8 bundle MB (every file of the bundle folder);
* WER (Whisper's English normaliser) on ljspeech/dev (97), librispeech-clean-mini (14),
  speechocean762/eval.tsv (120), plain greedy decoding without timestamps (``DecodeConfig``);
* looping: utterances whose decoding hit the token cap (224), never hidden;
* differ: hypotheses (normalised text) that differ from the unpruned model's on the same backend;
* corpus and reference coverage of the kept tokens (the references are never used to choose).

Decoder ms/token is NOT measured here (the machine this ran on was shared); ``--timing-command``
prints the ``slimwhisper bench`` command that measures it for dense and pruned bundles in one run.

    .venv/bin/python experiments/vocab_table.py --models tiny.en --max-vocab tiny.en=15000 --threads 1
    .venv/bin/python experiments/vocab_table.py --models tiny.en base --timing-command
    .venv/bin/python experiments/vocab_table.py --models tiny.en --max-vocab tiny.en=30000 --backends bundle --embedding-bits 4

Prints a Markdown table; JSON rows are rewritten after every row (``--resume`` skips rows it has).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oneshot_table import (  # same folder: one list of evaluation sets
    CAP,
    EVALS,
    ROOT,
)
from recovery_at_scale import TRAIN

DEFAULT_MAX = {"tiny.en": 15000, "base": 7000}  # sized for the bundle targets (28 / 55 MB)


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def make_models(model: str, n: int | None, work: Path, threads: int, bundle_too: bool = True,
                texts: tuple[str, ...] = (), embedding_bits: int = 8) -> tuple[Path, Path]:  # fmt: skip
    """(slim folder, int8 bundle) of ``model`` (dense when ``n`` is None), made once and reused."""
    from slimwhisper.compress.prune import PruneConfig, prune
    from slimwhisper.compress.vocab import VocabConfig
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models import load_model
    from slimwhisper.models.slimdir import save_slim

    name = "dense" if n is None else f"vocab-en-{n}" + ("-text" if texts else "")
    slim, bundle = work / model / name, work / model / (f"{name}-int8" + ("" if embedding_bits == 8 else f"-table{embedding_bits}"))
    if not (slim / "model.safetensors").is_file():
        if n is None:
            save_slim(load_model(model), slim, force=True)
        else:
            refs = tuple(str(p) for p in EVALS.values() if p.exists())
            prune(PruneConfig(model=model, out=str(slim), force=True, vocab=VocabConfig(max_vocab=n, references=refs, texts=texts)),
                  progress=False)
    if bundle_too and not (bundle / "manifest.json").is_file():
        export_bundle(load_model(str(slim)), bundle, ExportConfig(quantize="int8", threads=threads, embedding_bits=embedding_bits),
                      force=True, log=lambda m: None)
    return slim, bundle


def evaluate_on(backend: str, source: Path, key: str, limit: int | None) -> dict:
    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.transcribe import DecodeConfig, make_transcriber

    t0 = time.perf_counter()
    tr = make_transcriber(backend, str(source), DecodeConfig(max_new_tokens=CAP))
    res = evaluate(tr, load_dataset(str(EVALS[key]), limit=limit), progress=False)
    return {"wer": res.wer, "looping": sum(u.tokens >= CAP for u in res.utterances), "n": res.n,
            "hyps": {u.id: u.hyp for u in res.utterances}, "s": round(time.perf_counter() - t0, 1)}


def recovered(model: str, slim: Path, bundle: Path, args) -> tuple[Path, Path]:
    """``slim`` trained with ``recover --method distill`` on the dense teacher's cached clips (targets
    respelled in the kept tokens, ``train/respell.py``); decoder-side, the encoder is unchanged."""
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models import load_model
    from slimwhisper.train.loop import TrainConfig
    from slimwhisper.train.recover import RecoverConfig, recover, save_recovered

    tag = f"-kd{args.recover_steps}" + ("-emb" if args.train_embeddings else "") + (
        f"-lr{args.recover_lr:g}-a{args.recover_alpha:g}" if (args.recover_lr, args.recover_alpha) != (1e-4, 0.5) else "")
    out, out_bundle = slim.with_name(slim.name + tag), bundle.with_name(slim.name + tag + "-int8")
    if not (out / "model.safetensors").is_file():
        dense = load_model(model)
        items = cached_items(dense, args.teacher_cache)
        loaded = load_model(str(slim))
        cfg = RecoverConfig("distill", TrainConfig(str(TRAIN[0]), n=len(items), steps=args.recover_steps, batch_size=8,
                                                   lr=args.recover_lr, warmup=0.1, threads=args.threads),
                            freeze_embeddings=not args.train_embeddings, distill_alpha=args.recover_alpha)  # fmt: skip
        t0 = time.process_time()
        recover(loaded, cfg, teacher=dense, examples=items, progress=False)
        print(f"  recovery: {len(items)} cached clips, {args.recover_steps} steps, "
              f"{(time.process_time() - t0) / 60:.1f} CPU min", flush=True)  # fmt: skip
        save_recovered(loaded, out, cfg, force=True)
    if not (out_bundle / "manifest.json").is_file():
        export_bundle(load_model(str(out)), out_bundle, ExportConfig(quantize="int8", threads=args.threads), force=True,
                      log=lambda m: None)
    return out, out_bundle


def cached_items(dense, root: str | None) -> list:
    """Every clip already in the dense teacher's cache (top-64, no hidden states): training audio only
    (the cache is built by ``recover`` / ``recovery_at_scale.py`` from the four training sets)."""
    from slimwhisper.train.recover import default_cache_dir
    from slimwhisper.train.teacher import (
        TeacherConfig,
        cache_key,
        load_item,
        weights_hash,
    )

    key = cache_key(weights_hash(dense.model), TeacherConfig(top_k=64))
    folder = Path(root or default_cache_dir()) / key
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise SystemExit(f"no teacher cache for these weights in {folder}: build one with recover --method distill")
    return [load_item(f, key) for f in files]


def row_for(model: str, n: int | None, backend: str, args) -> dict:
    from slimwhisper.spec import ArchSpec

    texts = tuple(args.vocab_text) if n is not None else ()
    slim, bundle = make_models(model, n, Path(args.work), args.threads, bundle_too=backend == "bundle", texts=texts,
                               embedding_bits=args.embedding_bits)
    if n is not None and args.recover_steps:
        slim, bundle = recovered(model, slim, bundle, args)
    meta = json.loads((slim / "slimwhisper.json").read_text())
    spec = ArchSpec.from_dict(meta["spec"])
    pruning = json.loads((slim / "pruning.json").read_text())
    vocab = (pruning.get("configs") or {}).get("vocab") or {}
    row = {"model": model, "max_vocab": n, "backend": backend, "vocab": spec.vocab, "params": spec.params(),
           "mflops_token": spec.flops(tokens=1, context=32)["decoder_token"] / 1e6, "bundle_mb": folder_mb(bundle) if bundle.is_dir() else float("nan"),
           "coverage": vocab.get("report"), "texts": list(texts), "recover": recover_key(args, n),
           "embedding_bits": table_bits(args, backend)}
    source = slim if backend == "torch" else bundle
    for key in args.evals:
        row[key] = evaluate_on(backend, source, key, args.limit)
    return row


def table_bits(args, backend: str) -> int | None:
    """Bits of the bundle's token table (rows written before the option existed: 8); torch rows: None."""
    return None if backend != "bundle" else 8 if args is None else args.embedding_bits


def recover_key(args, n) -> dict | None:
    if n is None or not args.recover_steps:
        return None
    key = {"steps": args.recover_steps, "lr": args.recover_lr, "embeddings": args.train_embeddings}
    return key if args.recover_alpha == 0.5 else {**key, "alpha": args.recover_alpha}


def differ(rows: list[dict]) -> None:
    """Hypotheses that differ from the unpruned model's (same model, backend and set)."""
    for r in rows:
        base = next((d for d in rows if d["model"] == r["model"] and d["backend"] == r["backend"]
                     and d["max_vocab"] is None and d.get("embedding_bits", 8) in (8, None)), None)
        for key in EVALS:
            if key in r and base is not None and key in base:
                from slimwhisper.text import normalize

                a, b = r[key]["hyps"], base[key]["hyps"]
                r[key]["differ"] = sum(normalize(a[i]) != normalize(b.get(i, "")) for i in a)


def line(r: dict) -> str:
    wers = " | ".join(f"{100 * r[k]['wer']:.2f} ({r[k]['looping']}, {r[k].get('differ', '-')})" if k in r else "-"
                      for k in EVALS)
    n = "dense" if r["max_vocab"] is None else str(r["max_vocab"]) + (" +text" if r.get("texts") else "")
    if r.get("recover"):
        rec = r["recover"]
        n += f" +KD {rec['steps']}" + (" emb" if rec["embeddings"] else "") + (
            f" lr {rec['lr']:g} a {rec['alpha']:g}" if "alpha" in rec or rec["lr"] != 1e-4 else "")
    if r.get("embedding_bits") not in (8, None):
        n += f" ({r['embedding_bits']}-bit table)"
    return (f"| {r['model']} | {n} | {r['backend']} | {r['vocab']:,} | {r['params'] / 1e6:.2f} M | "
            f"{r['mflops_token']:.1f} | {r['bundle_mb']:.1f} | {wers} |")


def timing_command(models: list[str], maxes: dict, work: Path) -> str:
    targets = []
    for m in models:
        targets += [str(work / m / "dense-int8"), str(work / m / f"vocab-en-{maxes[m]}-int8")]
    return (".venv/bin/slimwhisper bench " + " ".join(targets) + " --backend onnx --data "
            "../shared/data/ljspeech/dev.tsv --limit 20 --threads 1 --repeat 5 --out build/vocab/bench")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny.en"])
    p.add_argument("--max-vocab", nargs="*", default=[], help="MODEL=N (default tiny.en=15000 base=7000)")
    p.add_argument("--backends", nargs="+", default=["torch", "bundle"], choices=["torch", "bundle"])
    p.add_argument("--evals", nargs="+", default=list(EVALS), choices=list(EVALS))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(ROOT / "build" / "vocab"))
    p.add_argument("--json", default=str(ROOT / "build" / "vocab" / "vocab_table.json"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--vocab-text", nargs="*", default=[], help="training transcripts joining the corpus "
                   "(e.g. ../shared/data/ljspeech/train.tsv)")
    p.add_argument("--recover-steps", type=int, default=0, help="then distil the pruned model on the cached "
                   "teacher clips this many steps (targets respelled in the kept tokens)")
    p.add_argument("--recover-lr", type=float, default=1e-4)
    p.add_argument("--recover-alpha", type=float, default=0.5, help="recovery: weight of the pseudo-label CE")
    p.add_argument("--train-embeddings", action="store_true", help="recovery also trains the tied embedding")
    p.add_argument("--teacher-cache", default=None, help="teacher cache root (default: the slimwhisper cache)")
    p.add_argument("--embedding-bits", type=int, default=8, choices=[8, 4], help="bundles: bits of the tied token table")
    p.add_argument("--timing-command", action="store_true", help="only print the bench command for ms/token")
    args = p.parse_args()
    maxes = {**DEFAULT_MAX, **{k: int(v) for k, v in (s.split("=") for s in args.max_vocab)}}
    if args.timing_command:
        print(timing_command(args.models, maxes, Path(args.work)))
        return
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.json)
    rows = json.loads(out.read_text()) if args.resume and out.is_file() else []
    for model in args.models:
        for n in (None, maxes[model]):
            for backend in args.backends:
                texts = list(args.vocab_text) if n is not None else []
                if any(r["model"] == model and r["max_vocab"] == n and r["backend"] == backend
                       and r.get("texts", []) == texts and r.get("recover") == recover_key(args, n)
                       and r.get("embedding_bits", table_bits(None, backend)) == table_bits(args, backend) for r in rows):
                    continue
                print(f"[{model}] max_vocab={n} {backend}", flush=True)
                rows.append(row_for(model, n, backend, args))
                differ(rows)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=1))
                print(line(rows[-1]), flush=True)
    print("\n| model | max vocab | backend | vocab | params | MFLOPs/token | int8 bundle MB | "
          + " | ".join(f"{k} WER (loop, differ)" for k in EVALS) + " |")
    print("|" + "---|" * (7 + len(EVALS)))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
