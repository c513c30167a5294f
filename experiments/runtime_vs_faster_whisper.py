"""Our torch-free bundle (fp32, int8) vs faster-whisper int8 on the SAME weights, CPU, greedy.

    .venv/bin/python experiments/runtime_vs_faster_whisper.py --model tiny.en --threads 2

Protocol: same clips, same process, systems alternated (A B C, A B C, ...) after one warm-up
round, >= 5 timed repeats, median/min/max. Each system is timed through its public API on the
whole transcription. Encoder ms per 30 s window: our Transcript.encoder_s; for faster-whisper,
``WhisperModel.model.encode`` on the same features (its transcribe() does not report it).
Decoder ms/token = (total - encoder) / (tokens + 1) (the +1 is the EOT step). Peak RSS: a fresh
child process that imports, loads and transcribes one clip (``os.wait4`` ru_maxrss). WER fp32 vs
int8 on ljspeech/dev.tsv. ``--profile`` prints onnxruntime's per-operator time for one clip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
TARGETS = {"tiny.en": {"encoder_ms": 144}, "base": {"encoder_ms": 305, "rss_mb": 400, "int8_mb": 80}}


def read_tsv(path: Path, limit: int | None):
    import soundfile as sf

    rows = []
    for line in path.read_text().splitlines()[: limit or None]:
        cid, rel, text = (line.split("\t") + [""])[:3]
        audio, sr = sf.read(path.parent / rel, dtype="float32")
        assert sr == 16000, f"{rel}: {sr} Hz"
        rows.append((cid, audio, text))
    return rows


def ensure_bundle(model: str, out: Path, threads: int) -> Path:
    if (out / "manifest.json").is_file():
        return out
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models import load_model

    print(f"exporting {model} -> {out} (int8 + fp32 variants)", flush=True)
    export_bundle(load_model(model), out, ExportConfig(quantize="int8", keep_fp32=True, threads=threads))
    return out


def variant_size_mb(bundle: Path, variant: str) -> float:
    m = json.loads((bundle / "manifest.json").read_text())
    graph_files = {f for v in m["variants"].values() for f in v.values()}
    mine = set(m["variants"][variant].values())
    shared = [n for n in m["files"] if n not in graph_files and not n.endswith(".config")]
    return sum((bundle / n).stat().st_size for n in [*shared, *mine]) / 1e6


class Ours:
    def __init__(self, bundle: Path, variant: str, threads: int):
        from slimwhisper.runtime import BundleTranscriber

        self.name = f"bundle {variant}"
        self.t = BundleTranscriber(bundle, threads=threads, variant=variant)

    def run(self, audio):
        r = self.t.transcribe(audio)
        return r.text, len(r.tokens), r.encoder_s, r.windows


class FasterWhisper:
    def __init__(self, ct2_dir: Path, threads: int):
        from faster_whisper import WhisperModel

        self.name = "faster-whisper int8"
        self.m = WhisperModel(str(ct2_dir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)
        self.lang = "en" if self.m.model.is_multilingual else None

    def run(self, audio):
        segs, _ = self.m.transcribe(audio, beam_size=1, language=self.lang, temperature=0.0,
                                    without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
        segs = list(segs)
        return " ".join(s.text.strip() for s in segs), sum(len(s.tokens) for s in segs), None, 1

    def encoder_s(self, audio) -> float:
        import ctranslate2

        feats = self.m.feature_extractor(audio)[:, :3000]
        feats = np.ascontiguousarray(np.pad(feats, ((0, 0), (0, max(0, 3000 - feats.shape[1]))))[None])
        x = ctranslate2.StorageView.from_array(feats.astype(np.float32))
        t = time.perf_counter()
        self.m.model.encode(x, to_cpu=True)
        return time.perf_counter() - t


def timed_rounds(systems, clips, repeats):
    """Alternate systems; round 0 is the warm-up. Returns {name: [per-round dicts]}."""
    out = {s.name: [] for s in systems}
    for r in range(repeats + 1):
        for s in systems:
            total, tokens, enc, windows = 0.0, 0, 0.0, 0
            for _, audio, _ in clips:
                t = time.perf_counter()
                _, n, e, w = s.run(audio)
                total += time.perf_counter() - t
                tokens, windows = tokens + n + 1, windows + w
                enc += e if e is not None else s.encoder_s(audio)
            if r:
                out[s.name].append({"total": total, "tokens": tokens, "encoder": enc, "windows": windows})
    return out


def stats(values):
    return statistics.median(values), min(values), max(values)


_HWM = ";print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"


def peak_rss_mb(kind: str, arg: str, clip: Path, threads: int) -> float:
    """Peak RSS of a fresh child that imports, loads and transcribes one clip.

    The child prints its own VmHWM (high-water RSS of its address space, reset at exec). The
    ``os.wait4`` ru_maxrss is also read but is NOT used: Linux carries ru_maxrss across fork+exec,
    so it reports this (torch-laden, ~1.6 GB) parent's RSS for every child.
    """
    code = {
        "bundle": "import sys,soundfile as sf; from slimwhisper.runtime import BundleTranscriber as B;"
                  "a,_=sf.read(sys.argv[3],dtype='float32'); B(sys.argv[1],threads=int(sys.argv[4]),variant=sys.argv[2]).transcribe(a)",
        "fw": "import sys,soundfile as sf; from faster_whisper import WhisperModel as W;"
              "a,_=sf.read(sys.argv[3],dtype='float32'); m=W(sys.argv[1],device='cpu',compute_type='int8',cpu_threads=int(sys.argv[4]));"
              "list(m.transcribe(a,beam_size=1,without_timestamps=True)[0])",
    }[kind] + _HWM
    bundle, variant = (arg.split("::") + [""])[:2]
    proc = subprocess.Popen([sys.executable, "-c", code, bundle, variant, str(clip), str(threads)],
                            stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, _usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"child {kind} failed with status {status}")
    return int(stdout.split()[-1]) / 1024  # VmHWM is in kB


def wer_of(system, rows) -> float:
    from slimwhisper.text import score

    hyps = [system.run(a)[0] for _, a, _ in rows]
    result = score([t for _, _, t in rows], hyps)
    return float(getattr(result, "wer", result))


def profile(bundle: Path, variant: str, audio, threads: int, top: int = 8) -> None:
    import onnxruntime as ort

    from slimwhisper.runtime import BundleTranscriber

    t = BundleTranscriber(bundle, threads=threads, variant=variant)
    for part in ("encoder", "decoder"):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.enable_profiling = threads, True
        so.profile_file_prefix = f"/tmp/ort_profile_{part}"
        sess = ort.InferenceSession(str(bundle / t.manifest["variants"][variant][part]), so,
                                    providers=["CPUExecutionProvider"])
        setattr(t.decoder, part, sess)
        if part == "encoder":
            t.decoder.encode(t.features(audio))
        else:
            t.transcribe(audio)
        events = json.loads(Path(sess.end_profiling()).read_text())
        by_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                op = e["args"].get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1000
        total = sum(by_op.values())
        print(f"  {variant} {part}: {total:.1f} ms in kernels; top: " + ", ".join(
            f"{k} {v / total:.0%}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--bundle", type=Path, help="bundle with int8 + fp32 variants (exported if missing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clips", type=int, default=6, help="ljspeech dev clips in the timing set")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wer-limit", type=int, default=None, help="dev clips for WER (default all 97)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from slimwhisper.models.ct2dirs import bundled_ct2_folder

    bundle = ensure_bundle(args.model, args.bundle or ROOT / "out" / "bench" / f"{args.model}-bundle", args.threads)
    ct2 = bundled_ct2_folder(args.model)
    dev = DATA / "ljspeech" / "dev.tsv"
    clips = read_tsv(dev, args.clips)
    systems = [Ours(bundle, "fp32", args.threads), Ours(bundle, "int8", args.threads),
               FasterWhisper(ct2, args.threads)]
    rounds = timed_rounds(systems, clips, args.repeats)
    audio_s = sum(len(a) for _, a, _ in clips) / 16000
    print(f"\n{args.model}: {len(clips)} ljspeech dev clips ({audio_s:.1f} s audio), {args.threads} threads, greedy, "
          f"{args.repeats} timed rounds after 1 warm-up, alternated; median [min-max]")
    table = {}
    for s in systems:
        rs = rounds[s.name]
        total = stats([r["total"] for r in rs])
        enc = stats([1000 * r["encoder"] / r["windows"] for r in rs])
        dec = stats([1000 * (r["total"] - r["encoder"]) / r["tokens"] for r in rs])
        table[s.name] = {"total_s": total, "encoder_ms": enc, "decoder_ms_tok": dec}
        print(f"  {s.name:22s} total {total[0]:6.2f} s [{total[1]:.2f}-{total[2]:.2f}]  encoder/window "
              f"{enc[0]:6.1f} ms [{enc[1]:.1f}-{enc[2]:.1f}]  decoder {dec[0]:5.2f} ms/token "
              f"[{dec[1]:.2f}-{dec[2]:.2f}]")
    clip_path = dev.parent / dev.read_text().splitlines()[0].split("\t")[1]
    rss = {"bundle fp32": peak_rss_mb("bundle", f"{bundle}::fp32", clip_path, args.threads),
           "bundle int8": peak_rss_mb("bundle", f"{bundle}::int8", clip_path, args.threads),
           "faster-whisper int8": peak_rss_mb("fw", f"{ct2}::", clip_path, args.threads)}
    sizes = {"bundle fp32": variant_size_mb(bundle, "fp32"), "bundle int8": variant_size_mb(bundle, "int8"),
             "faster-whisper int8": sum(p.stat().st_size for p in ct2.iterdir() if p.is_file()) / 1e6}
    for k in rss:
        print(f"  {k:22s} peak RSS {rss[k]:6.0f} MB   size on disk {sizes[k]:6.1f} MB")
    rows = read_tsv(dev, args.wer_limit)
    wer = {s.name: wer_of(s, rows) for s in systems}
    print("  WER on ljspeech dev (%d clips): " % len(rows) + ", ".join(f"{k} {100 * v:.2f}%" for k, v in wer.items()))
    check_targets(args.model, table, rss, sizes, wer)
    if args.profile:
        print("onnxruntime profile (one clip):")
        for variant in ("fp32", "int8"):
            profile(bundle, variant, clips[0][1], args.threads)


def check_targets(model, table, rss, sizes, wer) -> None:
    t = TARGETS.get(model, {})
    fw = table["faster-whisper int8"]["decoder_ms_tok"][0]
    print("targets:")
    for name in ("bundle fp32", "bundle int8"):
        d = table[name]["decoder_ms_tok"][0]
        print(f"  {name}: decoder {d:.2f} ms/token = {d / fw:.2f}x faster-whisper (target <= 0.6x) "
              + ("OK" if d <= 0.6 * fw else f"MISSED by {d - 0.6 * fw:.2f} ms/token"))
        if "encoder_ms" in t:
            e = table[name]["encoder_ms"][0]
            print(f"  {name}: encoder {e:.0f} ms/window (target <= {t['encoder_ms']}) "
                  + ("OK" if e <= t["encoder_ms"] else f"MISSED by {e - t['encoder_ms']:.0f} ms"))
    if "rss_mb" in t:
        for name in ("bundle fp32", "bundle int8"):
            print(f"  {name}: peak RSS {rss[name]:.0f} MB (target <= {t['rss_mb']}) "
                  + ("OK" if rss[name] <= t["rss_mb"] else f"MISSED by {rss[name] - t['rss_mb']:.0f} MB"))
    if "int8_mb" in t:
        s = sizes["bundle int8"]
        print(f"  int8 bundle {s:.1f} MB (target <= {t['int8_mb']}) "
              + ("OK" if s <= t["int8_mb"] else f"MISSED by {s - t['int8_mb']:.1f} MB"))
    gap = 100 * (wer["bundle int8"] - wer["bundle fp32"])
    print(f"  int8 WER - fp32 WER = {gap:+.2f} pp (target within 0.5 pp) " + ("OK" if abs(gap) <= 0.5 else "MISSED"))


if __name__ == "__main__":
    main()
