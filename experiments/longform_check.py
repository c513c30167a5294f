"""Long-form check (issue 11): a ~5-minute recording made of consecutive ljspeech/dev clips,
transcribed by `slimwhisper transcribe --format srt` (timestamp-based seeking), against the
per-clip WER of the same model and decoding.

    .venv/bin/python experiments/longform_check.py --model tiny.en --minutes 5 --threads 1

Checks: SRT segments are monotonic, non-overlapping and cover the audio (first start, last end,
largest gap); WER of the joined SRT text against the joined references is within +0.5 points of
the per-clip corpus WER. Writes only under --work (default /tmp/slimwhisper-longform), never
into ../shared. No timing is taken.
"""

from __future__ import annotations

import argparse
import json
from itertools import pairwise
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".." / "shared" / "data" / "ljspeech" / "dev.tsv"


def build_recording(minutes: float, work: Path) -> tuple[Path, Path, list[tuple[str, str, float]]]:
    """Consecutive dev.tsv clips until ``minutes``; the WAV and a manifest of the same clips."""
    rows, pieces, total = [], [], 0.0
    for line in DEV.read_text().splitlines():
        clip_id, rel, text = line.split("\t")[:3]
        audio, sr = sf.read(DEV.parent / rel, dtype="float32")
        assert sr == 16000 and audio.ndim == 1, (rel, sr)
        pieces.append(audio)
        rows.append((clip_id, str((DEV.parent / rel).resolve()), text, audio.size / sr))
        total += audio.size / sr
        if total >= 60 * minutes:
            break
    work.mkdir(parents=True, exist_ok=True)
    wav = work / "ljdev_long.wav"
    sf.write(wav, np.concatenate(pieces), 16000, subtype="PCM_16")
    manifest = work / "clips.tsv"
    manifest.write_text("".join(f"{i}\t{p}\t{t}\n" for i, p, t, _ in rows))
    return wav, manifest, [(i, t, s) for i, _, t, s in rows]


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    def sec(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        start, end = re.match(r"(\S+) --> (\S+)", lines[1]).groups()
        out.append((sec(start), sec(end), " ".join(lines[2:])))
    return out


def check_segments(segs: list[tuple[float, float, str]], duration: float) -> dict:
    monotonic = all(a[0] <= b[0] for a, b in pairwise(segs)) and all(s <= e for s, e, _ in segs)
    overlaps = [(a[1], b[0]) for a, b in pairwise(segs) if b[0] < a[1] - 1e-6]
    gaps = [b[0] - a[1] for a, b in pairwise(segs)]
    return {"segments": len(segs), "monotonic": monotonic, "overlaps": len(overlaps),
            "first_start_s": segs[0][0], "last_end_s": segs[-1][1], "duration_s": duration,
            "largest_gap_s": max(gaps, default=0.0),
            "covered_s": sum(e - s for s, e, _ in segs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--bundle", default=None, help="Transcribe with this bundle instead of --model.")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimwhisper-longform"))
    args = ap.parse_args()

    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.text import score
    from slimwhisper.transcribe import DecodeConfig, make_transcriber

    wav, manifest, rows = build_recording(args.minutes, args.work)
    duration = sum(s for _, _, s in rows)
    source = ["--bundle", args.bundle] if args.bundle else ["--model", args.model]
    srt_path = args.work / "ljdev_long.srt"
    cmd = [str(ROOT / ".venv" / "bin" / "slimwhisper"), "transcribe", *source, "--format", "srt",
           "--threads", str(args.threads), "--out", str(srt_path), "--force", str(wav)]
    subprocess.run(cmd, check=True)
    segs = parse_srt(srt_path.read_text())
    seg_check = check_segments(segs, duration)
    joined_ref = " ".join(t for _, t, _ in rows)
    long_wer = score([joined_ref], [" ".join(t for _, _, t in segs)]).wer

    backend, src = ("bundle", args.bundle) if args.bundle else ("torch", args.model)
    tr = make_transcriber(backend, src, DecodeConfig.whisper(), args.threads)
    per_clip = evaluate(tr, load_dataset(manifest), progress=False)
    result = {"command": " ".join(cmd), "clips": len(rows), **seg_check,
              "longform_wer": long_wer, "per_clip_wer": per_clip.wer,
              "delta_points": 100 * (long_wer - per_clip.wer),
              "within_0.5_points": 100 * (long_wer - per_clip.wer) <= 0.5}
    (args.work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = seg_check["monotonic"] and not seg_check["overlaps"] and result["within_0.5_points"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
