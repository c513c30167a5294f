"""What ``slimwhisper bench --device/--profile/--estimate`` does (the CLI only forwards its options)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from slimwhisper.devices.bench import DeviceBenchConfig, device_bench, estimate_markdown, estimate_rows
from slimwhisper.devices.profile import get_profile


def bench_on_device(targets: list[str], *, device: str | None, profile: str | None, estimate: bool,
                    data: Path | None, out: Path | None, threads: int | None, repeat: int, limit: int | None,
                    timing_limit: int | None, clip_seconds: float, force: bool,
                    say: Callable[[str], None]) -> dict:
    config = DeviceBenchConfig(targets=tuple(targets), device=device or profile or "", profile=profile,
                               estimate=estimate, data=None if data is None else str(data),
                               out=None if out is None else str(out), threads=threads, repeat=repeat, limit=limit,
                               timing_limit=timing_limit, clip_seconds=clip_seconds, force=force,
                               command=" ".join(["slimwhisper", *sys.argv[1:]]))
    if config.estimate:
        prof = get_profile(config.profile_name)
        rows = estimate_rows(config, prof)
        print(estimate_markdown(prof, rows, config.clip_seconds))
        if config.out:
            from slimwhisper.outputs import check_output_file, write_json

            path = Path(config.out)
            path = path / "estimate.json" if path.is_dir() else path
            check_output_file(path, force=force, option="--out")
            write_json(path, {"kind": "estimate", "note": "estimates, not measurements", "profile": prof.to_dict(),
                              "clip_seconds": config.clip_seconds, "rows": rows})
            say(f"estimates written to {path}")
        return {"estimate": rows}
    report = device_bench(config, say)
    from slimwhisper.devices.bench import device_markdown

    print(device_markdown(report))
    say(f"report: {Path(config.out) / 'report.json'} (calibrate with: slimwhisper devices calibrate "
        f"{config.profile_name or 'PROFILE'} --from {Path(config.out) / 'report.json'})")
    return json.loads(json.dumps(report))
