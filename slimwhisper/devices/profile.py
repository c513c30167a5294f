"""Device profiles: data files (``profiles/NAME.json``) with sourced figures and a ``calibrated`` flag.

Every figure is ``{"value", "kind", "source"}``: ``kind`` is ``spec`` (a vendor data sheet),
``published`` (someone's measurement, cited), ``derived`` (computed from other figures, the
derivation in ``source``), ``detected`` (read off this machine at load time), ``assumed`` or
``unknown`` (no figure found: the estimator falls back to a stated default and says so).

Profiles are a registry (name -> loader). The built-in files sit beside this module; a
calibrated copy written by ``slimwhisper devices calibrate`` goes to the user profile folder
(``$SLIMWHISPER_PROFILE_DIR``, else ``~/.config/slimwhisper/devices``) and takes precedence over
the built-in one of the same name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slimwhisper.errors import UserError

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"
FIGURE_KINDS = ("spec", "published", "derived", "detected", "assumed", "unknown")
REQUIRED_FIGURES = ("cores", "clock_ghz", "fp32_peak_gflops", "int8_dot", "gemm_gflops", "int8_speedup",
                    "mem_copy_gbs", "ram_gb")
# Fallbacks used only when a profile has no figure; every estimate names the ones it used.
GEMM_FRACTION_OF_PEAK = 0.5
DEFAULT_MEM_COPY_GBS = {"rpi-zero-2w": 1.5, "x86-local": 10.0}
MEM_FRACTION_OF_PEAK = 0.5


class DeviceError(UserError, ValueError):
    """A device, profile or runner cannot do what was asked; the message says what to do."""


@dataclass(frozen=True)
class Figure:
    value: Any
    kind: str
    source: str

    def problems(self, where: str) -> list[str]:
        out = []
        if self.kind not in FIGURE_KINDS:
            out.append(f"{where}.kind must be one of {', '.join(FIGURE_KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            out.append(f"{where}.source must say where the figure comes from")
        if self.value is None and self.kind not in ("unknown", "detected"):
            out.append(f"{where} has no value but kind {self.kind!r} (use 'unknown')")
        return out


@dataclass(frozen=True)
class DeviceProfile:
    """One target device. ``calibration`` maps ``PHASE/PRECISION`` (e.g. ``encoder/int8``) to
    ``{"efficiency", "runs", "rel_errors", ...}`` fitted from real runs; empty when uncalibrated."""

    name: str
    describe: str
    arch: str
    figures: dict[str, Figure]
    qemu_cpu: str | None = None
    detect: bool = False
    published: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # as in the file (before detection)

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        for key in REQUIRED_FIGURES:
            if key not in self.figures:
                problems.append(f"figures.{key} is missing")
        for key, fig in self.figures.items():
            problems += fig.problems(f"figures.{key}")
        if self.calibrated != bool(self.calibration.get("phases")):
            problems.append("'calibrated' must be true exactly when 'calibration.phases' holds fitted phases")
        if problems:
            raise DeviceError(f"device profile {self.name or '?'} ({self.path or 'in memory'}) is invalid", problems)

    # ---- figures ----------------------------------------------------------------------------
    def value(self, key: str) -> Any:
        fig = self.figures.get(key)
        return None if fig is None else fig.value

    def gemm_gflops(self) -> tuple[float, str | None]:
        """(FP32 GEMM ceiling, the fallback note when the profile had no measured figure)."""
        g = self.value("gemm_gflops")
        if g:
            return float(g), None
        peak = float(self.value("fp32_peak_gflops"))
        return GEMM_FRACTION_OF_PEAK * peak, f"no GEMM figure: used {GEMM_FRACTION_OF_PEAK} x FP32 peak {peak:.0f} GFLOP/s"

    def mem_gbs(self) -> tuple[float, str | None]:
        m = self.value("mem_copy_gbs")
        if m:
            return float(m), None
        peak = self.value("mem_peak_gbs")
        if peak:
            return MEM_FRACTION_OF_PEAK * float(peak), f"no copy figure: used {MEM_FRACTION_OF_PEAK} x peak {peak} GB/s"
        fallback = DEFAULT_MEM_COPY_GBS.get(self.name, 5.0)
        return fallback, f"no memory figure: assumed {fallback} GB/s"

    def phase_calibration(self, phase: str, precision: str) -> dict[str, Any] | None:
        return (self.calibration.get("phases") or {}).get(f"{phase}/{precision}")

    def to_dict(self) -> dict[str, Any]:
        """As a profile file: detected figures are written back undetected (the next load detects again)."""
        raw = self.raw or {}
        figures = raw.get("figures") or {k: {"value": f.value, "kind": f.kind, "source": f.source}
                                         for k, f in self.figures.items()}
        return {"name": self.name, "describe": raw.get("describe", self.describe), "arch": self.arch,
                "qemu_cpu": self.qemu_cpu, "detect": self.detect, "figures": figures,
                "published": self.published, "calibrated": self.calibrated, "calibration": self.calibration}


def profile_from_dict(data: dict[str, Any], path: str | None = None) -> DeviceProfile:
    try:
        figures = {k: Figure(v["value"], v["kind"], v["source"]) for k, v in data["figures"].items()}
        profile = DeviceProfile(name=data["name"], describe=data.get("describe", ""), arch=data.get("arch", "?"),
                                figures=figures, qemu_cpu=data.get("qemu_cpu"), detect=bool(data.get("detect")),
                                published=data.get("published") or {}, calibrated=bool(data.get("calibrated")),
                                calibration=data.get("calibration") or {}, path=path,
                                raw={"figures": data["figures"], "describe": data.get("describe", "")})
    except (KeyError, TypeError, AttributeError) as exc:
        raise DeviceError(f"device profile {path or '?'} is malformed: missing or wrong field {exc}") from exc
    return detect_local(profile) if profile.detect else profile


# ---- this machine -------------------------------------------------------------------------------
def _cpuinfo() -> tuple[float | None, set[str], str]:
    mhz, flags, model = None, set(), "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "cpu MHz" and mhz is None:
                mhz = float(val)
            elif key == "flags" and not flags:
                flags = set(val.split())
            elif key == "model name" and model == "unknown CPU":
                model = val.strip()
    except (OSError, ValueError):
        pass
    return mhz, flags, model


def _mem_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def detect_local(profile: DeviceProfile) -> DeviceProfile:
    """Fill a ``detect`` profile's figures from this machine (each marked ``detected``)."""
    mhz, flags, model = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ghz = round(mhz / 1000, 2) if mhz else 2.0
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    figs = dict(profile.figures)

    def put(key: str, value: Any, note: str) -> None:
        if figs[key].value is None and figs[key].kind == "detected":
            figs[key] = Figure(value, "detected", f"{figs[key].source}: {note}")

    put("cores", cores, f"{cores} usable cores")
    put("clock_ghz", ghz, f"{mhz} MHz" if mhz else "not readable, assumed 2.0 GHz")
    put("fp32_peak_gflops", round(cores * ghz * per_cycle, 1), f"{cores} x {ghz} GHz x {per_cycle} ({model})")
    put("int8_dot", bool({"avx512_vnni", "avx_vnni"} & flags), "VNNI" if {"avx512_vnni", "avx_vnni"} & flags else "no VNNI")
    put("ram_gb", _mem_gb() or 1.0, "MemTotal")
    cal = profile.calibration
    describe = f"{profile.describe}: {model}"
    if cal.get("cpu") and cal["cpu"] != model:
        describe += f" (calibrated on a different CPU: {cal['cpu']})"
    return replace(profile, describe=describe, figures=figs)


# ---- registry -----------------------------------------------------------------------------------
def user_dir() -> Path:
    env = os.environ.get("SLIMWHISPER_PROFILE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".config" / "slimwhisper" / "devices"


ProfileLoader = Callable[[], DeviceProfile]
PROFILES: dict[str, ProfileLoader] = {}


def register_profile(name: str, loader: ProfileLoader) -> None:
    PROFILES[name] = loader


def _file_loader(path: Path) -> ProfileLoader:
    def load() -> DeviceProfile:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot read device profile {path}: {exc}") from exc
        return profile_from_dict(data, str(path))

    return load


for _p in sorted(BUILTIN_DIR.glob("*.json")):
    register_profile(_p.stem, _file_loader(_p))


def profile_names() -> list[str]:
    user = [p.stem for p in user_dir().glob("*.json")] if user_dir().is_dir() else []
    return sorted(set(PROFILES) | set(user))


def get_profile(name: str) -> DeviceProfile:
    """The user's calibrated copy when there is one, else the built-in profile; unknown names list them all."""
    user = user_dir() / f"{name}.json"
    if user.is_file():
        return _file_loader(user)()
    if name not in PROFILES:
        raise DeviceError(f"unknown device profile {name!r}; known profiles: {', '.join(profile_names())} "
                          f"(or add {user_dir() / (name + '.json')})")
    return PROFILES[name]()


def builtin_profile(name: str) -> DeviceProfile:
    if name not in PROFILES:
        raise DeviceError(f"unknown device profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]()
