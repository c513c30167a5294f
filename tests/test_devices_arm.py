"""aarch64 check under qemu-user (opt-in: ``make test-arm``; marked slow, never in the default suite).

An arm64 Debian bookworm rootfs (``debootstrap --foreign``: its packages are unpacked, nothing
arm64 is executed to configure them) gets aarch64 wheels of numpy and onnxruntime (the host's
versions, installed by the host's pip with ``--platform``). A bundle then runs there through the
same runner machinery as a real device (dependency check, upload by hash, ``devbench.py``), each
command as ``qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.11 ...``.

Known trap: QEMU 7.2 passes the host's x86 ``/proc/cpuinfo`` through, and onnxruntime's CPU
detection crashes on it (SIGSEGV on import). Each command therefore runs in a private mount
namespace (``unshare -m``) with an aarch64 cpuinfo bind-mounted over /proc/cpuinfo; the host's is
never touched. ``QEMU_CPU`` follows the profile (rpi5: cortex-a76 with DotProd, rpi4: cortex-a72
without), which changes which int8 kernels onnxruntime picks.

Emulated timings are never reported: only the transcript and the logits are compared with x86.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from _helpers import write_manifest

from slimwhisper.devices.profile import get_profile
from slimwhisper.devices.runners import ExecResult, LocalRunner, check_device, folder_files, runtime_files, stage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROOTFS = Path(os.environ.get("SLIMWHISPER_ARM_ROOTFS", ROOT / "build" / "arm64-rootfs"))
MIRROR = "http://deb.debian.org/debian"
# /proc/cpuinfo as an aarch64 kernel writes it (Arm part numbers: 0xd0b Cortex-A76, 0xd08 Cortex-A72)
CPUINFO = {
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                            "dcpop asimddp"),
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),
}
RUN = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'


def _skip_reason() -> str | None:
    if os.environ.get("SLIMWHISPER_ARM") != "1":
        return "opt-in: run `make test-arm` (SLIMWHISPER_ARM=1)"
    missing = [t for t in ("debootstrap", "qemu-aarch64-static", "unshare", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install debootstrap qemu-user-static)"
    if os.geteuid() != 0:
        return "needs root (debootstrap, unshare -m)"
    return None


def build_rootfs() -> Path:
    """Once per machine (kept under build/): bookworm arm64 files + python3 + aarch64 wheels."""
    py = ROOTFS / "usr" / "bin" / "python3.11"
    site = ROOTFS / "usr" / "lib" / "python3" / "dist-packages"
    if not py.exists():
        ROOTFS.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3,libstdc++6",
                        "bookworm", str(ROOTFS), MIRROR], check=True, capture_output=True)
        for deb in sorted((ROOTFS / "var" / "cache" / "apt" / "archives").glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(ROOTFS)], check=True)
    if not (site / "onnxruntime").is_dir():
        pins = [f"{m}=={metadata.version(m)}" for m in ("numpy", "onnxruntime")]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "--only-binary=:all:",
                        "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                        "--python-version", "3.11", "--implementation", "cp", *pins], check=True)
    return ROOTFS


@dataclass(frozen=True)
class QemuRunner:
    """An emulated arm64 'device': argv[0] is the rootfs python, run by qemu-user in a private mount ns."""

    rootfs: Path
    qemu_cpu: str
    cpuinfo: Path
    root: str
    label: str = "qemu-aarch64"

    @property
    def python(self) -> str:
        return str(self.rootfs / "usr" / "bin" / "python3.11")

    def exec(self, argv: list[str], *, stdin: bytes | None = None, timeout: float) -> ExecResult:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", RUN, str(self.cpuinfo),
               "qemu-aarch64-static", "-L", str(self.rootfs), *argv]
        done = subprocess.run(cmd, check=False, input=stdin, capture_output=True, timeout=timeout,
                              env={**os.environ, "QEMU_CPU": self.qemu_cpu})
        return ExecResult(done.returncode, done.stdout, done.stderr.decode(errors="replace"))

    def explain(self, result: ExecResult, what: str):
        return AssertionError(f"{what} under qemu failed (exit {result.returncode}): {result.stderr[-800:]}")


def _bench(runner, bundle: Path, npz: Path, logits: Path) -> dict:
    import json

    rt = stage(runner, "runtime", runtime_files())
    b = stage(runner, "bundles", folder_files(bundle))
    c = stage(runner, "clips", [(npz, "clips.npz")])
    res = runner.exec([runner.python, "-I", f"{rt.path}/devbench.py", "--bundle", b.path, "--clips",
                       f"{c.path}/clips.npz", "--repeat", "1", "--threads", "1", "--logits", str(logits)], timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def arm_rootfs():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return build_rootfs()


def test_bundle_on_emulated_arm64_matches_x86(arm_rootfs, tiny_bundle, tmp_path):
    profile = get_profile(os.environ.get("SLIMWHISPER_ARM_PROFILE", "rpi5"))
    qemu_cpu = profile.qemu_cpu
    part, features = CPUINFO[qemu_cpu]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                               f"CPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
                               for i in range(int(profile.value('cores') or 4))))
    arm = QemuRunner(arm_rootfs, qemu_cpu, cpuinfo, str(tmp_path / "arm-stage"))
    info = check_device(arm)
    assert info["machine"] == "aarch64" and info["onnxruntime"] == metadata.version("onnxruntime")

    _loaded, bundle = tiny_bundle
    bundle = Path(os.environ.get("SLIMWHISPER_ARM_BUNDLE", bundle))
    data = write_manifest(tmp_path / "data", n=2)
    from slimwhisper.data import load_dataset

    clips = list(load_dataset(data))
    npz = tmp_path / "clips.npz"
    np.savez(npz, ids=np.array([u.id for u in clips]), **{f"clip{i}": np.asarray(u.audio, np.float32)
                                                          for i, u in enumerate(clips)})
    x86 = _bench(LocalRunner(root=str(tmp_path / "x86-stage")), bundle, npz, tmp_path / "x86.npy")
    a64 = _bench(arm, bundle, npz, tmp_path / "arm.npy")
    assert a64["device"]["machine"] == "aarch64" and x86["device"]["machine"] == "x86_64"
    assert [r["text"] for r in a64["accuracy"]] == [r["text"] for r in x86["accuracy"]]
    assert [r["tokens"] for r in a64["accuracy"]] == [r["tokens"] for r in x86["accuracy"]]
    lx, la = np.load(tmp_path / "x86.npy"), np.load(tmp_path / "arm.npy")
    assert lx.shape == la.shape and lx.size > 0
    np.testing.assert_allclose(la, lx, rtol=1e-4, atol=1e-4 * float(np.abs(lx).max()))
    # emulated timings exist in a64 but are deliberately not asserted, printed or reported
