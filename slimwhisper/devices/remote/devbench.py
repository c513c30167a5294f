"""Runs ON the device: time a bundle on uploaded clips with slimwhisper's torch-free runtime.

Needs only the standard library, numpy, onnxruntime and the uploaded ``slimwhisper/runtime`` +
``slimwhisper/errors.py`` beside this file. Prints one JSON object on stdout; figures are
derived on the host with the same formulas as ``slimwhisper bench`` (``bench.timing``).

    python3 devbench.py --bundle DIR [--variant V] --clips clips.npz --threads N --repeat R [--timing-limit K]

Protocol: one load (timed), an accuracy pass over every clip (also the warm-up), then ``repeat``
timing passes over the first ``timing-limit`` clips; per clip the runtime's own encoder seconds,
total seconds, generated tokens and windows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the uploaded slimwhisper/ (python -I does not add the script's folder)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _clip_result(t) -> dict:
    return {"text": t.text.strip(), "tokens": len(t.tokens), "encoder_s": t.encoder_s, "total_s": t.total_s,
            "windows": t.windows}


def first_clip_logits(tr, audio):
    """Logits of every step along the clip's own greedy tokens (first 30 s window): what an
    architecture check compares between machines."""
    import numpy as np

    from slimwhisper.runtime.decode import teacher_forced_logits

    cross = tr.model.encode(tr.features(audio))
    tokens = [t for t in tr.transcribe(audio).tokens]
    prompt = tr.prompt(None) + [tr.tokens["no_timestamps"]]
    return np.stack(teacher_forced_logits(tr.model, cross, prompt, tokens))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--variant")
    ap.add_argument("--clips", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timing-limit", type=int, default=None)
    ap.add_argument("--logits", help="also save the first clip's teacher-forced logits (steps x vocab) to this .npy")
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime

    import slimwhisper
    from slimwhisper.errors import UserError
    from slimwhisper.runtime import BundleTranscriber

    try:
        t0 = time.perf_counter()
        tr = BundleTranscriber(args.bundle, threads=args.threads, variant=args.variant)
        load_s = time.perf_counter() - t0
        with np.load(args.clips) as npz:
            ids = [str(x) for x in npz["ids"]]
            clips = [np.asarray(npz[f"clip{i}"], dtype=np.float32) for i in range(len(ids))]
        accuracy = [_clip_result(tr.transcribe(c)) for c in clips]
        timed = clips[: args.timing_limit] if args.timing_limit else clips
        passes = [[_clip_result(tr.transcribe(c)) for c in timed] for _ in range(args.repeat)]
        if args.logits:
            np.save(args.logits, first_clip_logits(tr, clips[0]))
    except UserError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    out = {
        "device": {"cpu": _cpu(), "machine": platform.machine(), "platform": platform.platform(),
                   "python": sys.version.split()[0], "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
                   "logical_cores": os.cpu_count(), "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                   "runtime_from": os.path.dirname(os.path.abspath(slimwhisper.__file__))},
        "variant": tr.variant, "threads": args.threads, "load_s": load_s, "ids": ids,
        "accuracy": accuracy, "passes": passes, "timing_clips": len(timed),
        # ru_maxrss is KiB on Linux: this process's peak (imports + load + every pass)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
