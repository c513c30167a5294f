"""Peak memory of a FRESH process that imports a backend, loads the model and transcribes.

The parent starts one child per entry; the peak is the child's own VmHWM (Linux), with
``os.wait4``'s ru_maxrss as the fallback and a cross-check (``RUSAGE_CHILDREN`` would keep the
maximum over every child so far). The child also reports
its RSS right after the imports, so the report can say how much of the peak is libraries
(torch alone is ~380 MB here) rather than the model.

Child protocol: ``python -m slimwhisper.bench.memory REQUEST.json`` prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc; falls back to the peak so far elsewhere)."""
    now = _status_mb("VmRSS")
    if now is not None:
        return now
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_fresh(backend: str, source: str, audio_npy: Path, threads: int, timeout_s: float = 900) -> dict[str, Any]:
    """Run one child; returns its report plus ``peak_rss_mb`` from ``os.wait4``; raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="slimwhisper-mem-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps({"backend": backend, "source": source, "audio": str(audio_npy), "threads": threads}))
        out_path, err_path = Path(tmp) / "out.json", Path(tmp) / "err.txt"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "slimwhisper.bench.memory", str(req)],
                                    stdout=out, stderr=err, env=env)
            deadline = time.monotonic() + timeout_s
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    os.wait4(proc.pid, 0)
                    raise RuntimeError(f"memory child for {backend}:{source} ran past {timeout_s:.0f} s")
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:
            tail = err_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"memory child for {backend}:{source} failed (exit {proc.returncode}): " + " | ".join(tail))
        report = json.loads(out_path.read_text().strip().splitlines()[-1])
    # ru_maxrss (Linux: kilobytes) also counts the parent's RSS at fork time, before exec: with
    # models already loaded in the parent (the `run` pipeline) every child read the parent's
    # 3.1 GB. VmHWM is the peak of the child's own address space since exec, so it is the figure;
    # wait4's is kept beside it and is the fallback where /proc is missing.
    report["wait4_maxrss_mb"] = usage.ru_maxrss / 1024
    report["peak_rss_mb"] = report.get("vm_hwm_mb") or report["wait4_maxrss_mb"]
    return report


def _child(request_path: str) -> None:
    req = json.loads(Path(request_path).read_text())
    python_mb = current_rss_mb()
    from slimwhisper.bench.backends import get_backend, import_modules

    kind = get_backend(req["backend"])
    import_modules(kind)
    imports_mb = current_rss_mb()
    import numpy as np

    from slimwhisper.bench.targets import resolve_target

    audio = np.load(req["audio"])
    t0 = time.perf_counter()
    runner = kind.open(resolve_target(req["source"]), req["threads"])
    load_s = time.perf_counter() - t0
    loaded_mb = current_rss_mb()
    result = runner.transcribe(audio)
    print(json.dumps({"python_rss_mb": python_mb, "imports_rss_mb": imports_mb, "loaded_rss_mb": loaded_mb,
                      "vm_hwm_mb": _status_mb("VmHWM"), "load_s": load_s, "transcribe_s": result.total_s,
                      "torch_imported": "torch" in sys.modules,  # a bundle entry must not pay for torch
                      "text": result.text}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
