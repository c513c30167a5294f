"""``slimwhisper devices``: list and show device profiles, calibrate one from real bench reports,
and compare its estimates with measurements. Measuring on a device is ``slimwhisper bench
BUNDLE --device ssh://user@host --profile P``; estimating is ``bench BUNDLE --device P --estimate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app
from slimwhisper.cli.options import ForceOpt

devices_app = typer.Typer(help="Device profiles, latency estimates and their calibration.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")

FromOpt = Annotated[list[Path], typer.Option("--from", help="report.json of a real `slimwhisper bench` run "
                                                            "(or its folder); repeatable.")]


@devices_app.command("list")
def list_profiles() -> None:
    """Every known profile, and whether it has been calibrated on real runs."""
    from slimwhisper.devices.profile import get_profile, profile_names

    for name in profile_names():
        p = get_profile(name)
        runs = sorted({v["runs"] for v in (p.calibration.get("phases") or {}).values()})
        state = f"calibrated ({', '.join(map(str, runs))} runs)" if p.calibrated else "uncalibrated"
        typer.echo(f"{name:18} {state:24} {p.describe}")


@devices_app.command("show")
def show(profile: Annotated[str, typer.Argument(help="Profile name (see `slimwhisper devices list`).")]) -> None:
    """A profile's figures, each with its kind and source, and its calibration."""
    import json

    from slimwhisper.devices.profile import get_profile

    p = get_profile(profile)
    typer.echo(f"{p.name}: {p.describe}  [{p.path}]")
    for key, fig in p.figures.items():
        typer.echo(f"  {key:18} {fig.value!s:>10}  ({fig.kind}) {fig.source}")
    typer.echo(f"  calibrated: {p.calibrated}")
    if p.calibrated:
        typer.echo(json.dumps(p.calibration, indent=2))


@devices_app.command("calibrate")
def calibrate(
    profile: Annotated[str, typer.Argument(help="Profile to fit (e.g. x86-local, rpi5).")],
    sources: FromOpt,
    out: Annotated[Path | None, typer.Option("--out", help="Write the calibrated profile here (default: the user "
                                                           "profile folder, $SLIMWHISPER_PROFILE_DIR or ~/.config/slimwhisper/devices).")] = None,
    force: ForceOpt = False,
) -> None:
    """Fit the profile's per-phase efficiency to measured runs (never to estimates)."""
    from slimwhisper.devices.calibrate import compare_markdown, compare_rows, fit, read_runs
    from slimwhisper.devices.profile import PROFILES, builtin_profile, get_profile, user_dir
    from slimwhisper.outputs import check_output_file, write_json

    if out is not None:
        check_output_file(out, force=force, option="--out", inputs=sources)
    target = out or user_dir() / f"{profile}.json"  # the default replaces an earlier calibration
    runs, skipped = [], []
    for src in sources:
        r, s = read_runs(src)
        runs += r
        skipped += s
    # refit from the built-in figures; a profile that exists only in the user folder is refitted in place
    base = builtin_profile(profile) if profile in PROFILES else get_profile(profile)
    fitted = fit(base, runs)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, fitted.to_dict())
    for line in skipped:
        typer.echo(f"skipped {line}", err=True)
    typer.echo(compare_markdown(fitted, compare_rows(fitted, runs)))
    typer.echo(f"calibrated profile {profile} on {len(runs)} runs -> {target} (in-sample errors above: check it on "
               f"runs not used in the fit with `slimwhisper devices compare {profile} --from OTHER/report.json`)", err=True)


@devices_app.command("compare")
def compare(
    profile: Annotated[str, typer.Argument(help="Profile whose estimates to check.")],
    sources: FromOpt,
) -> None:
    """Estimated vs measured per phase for the runs in these reports (held-out runs show the estimator's error)."""
    from slimwhisper.devices.calibrate import compare_markdown, compare_rows, read_runs
    from slimwhisper.devices.profile import DeviceError, get_profile

    runs, skipped = [], []
    for src in sources:
        r, s = read_runs(src)
        runs += r
        skipped += s
    if not runs:
        raise DeviceError("no measured runs in " + ", ".join(map(str, sources)), skipped)
    for line in skipped:
        typer.echo(f"skipped {line}", err=True)
    typer.echo(compare_markdown(get_profile(profile), compare_rows(get_profile(profile), runs)))
