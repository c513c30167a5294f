"""Runners: one interface to run an argument list on a device (this machine, or one over SSH).

A runner only executes argument lists (``exec``); staging files, checking the device's Python
and running the benchmark are written once here on top of it, so the local runner exercises the
same code path as SSH. What goes to a device is ``slimwhisper/runtime/``, ``slimwhisper/errors.py``
and ``remote/devbench.py`` (standard library + numpy + onnxruntime), the bundle and the clips;
each is uploaded as a tar on stdin, unpacked atomically under the runner's ``root`` in a folder
named by its content hash, and reused when an identical upload is already there.

Runners are a registry: ``--device`` ``local`` / ``local://?python=..&root=..`` or
``ssh://[user@]host[:port]?key=..&known_hosts=..&python=..`` (see ``slimwhisper.devices.ssh``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from slimwhisper.devices.profile import DeviceError

PACKAGE = Path(__file__).resolve().parents[1]  # slimwhisper/
DEVBENCH = Path(__file__).resolve().parent / "remote" / "devbench.py"
RUN_TIMEOUT_S = 1800.0
CHECK_TIMEOUT_S = 60.0

# Run on the device with its python3: versions of what the runtime needs, as one JSON line.
CHECK_CODE = r"""
import json, platform, sys
out = {"python": sys.version.split()[0], "machine": platform.machine(), "executable": sys.executable}
for m in ("numpy", "onnxruntime"):
    try:
        mod = __import__(m)
        out[m] = getattr(mod, "__version__", "?")
    except Exception as exc:
        out[m] = None
        out[m + "_error"] = "%s: %s" % (type(exc).__name__, exc)
try:
    out["mem_total_kb"] = int([l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal:")][0])
except Exception:
    out["mem_total_kb"] = None
print(json.dumps(out))
"""

# argv: root kind digest. Prints the folder when that exact upload is there, else "missing".
HAVE_CODE = r"""
import os, sys
d = os.path.join(os.path.expanduser(sys.argv[1]), sys.argv[2], sys.argv[3])
print(d if os.path.isfile(os.path.join(d, ".slimwhisper-complete")) else "missing")
"""

# argv: root kind digest; a tar on stdin, unpacked into a temp sibling and renamed into place.
UNPACK_CODE = r"""
import os, shutil, sys, tarfile, tempfile
parent = os.path.join(os.path.expanduser(sys.argv[1]), sys.argv[2])
os.makedirs(parent, exist_ok=True)
final = os.path.join(parent, sys.argv[3])
tmp = tempfile.mkdtemp(prefix=".up-", dir=parent)
try:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            if member.name.startswith(("/", "..")) or "/../" in member.name or not (member.isfile() or member.isdir()):
                raise SystemExit("refusing tar member %r" % member.name)
            tar.extract(member, tmp)
    open(os.path.join(tmp, ".slimwhisper-complete"), "w").close()
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
finally:
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
print(final)
"""


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: str


class Runner(Protocol):
    """Runs an argument list on the device; ``python`` is the interpreter there, ``root`` the
    folder uploads go to (``~`` allowed: the device expands it)."""

    label: str
    python: str
    root: str

    def exec(self, argv: list[str], *, stdin: bytes | None = None, timeout: float) -> ExecResult: ...

    def explain(self, result: ExecResult, what: str) -> DeviceError: ...


# ---- local ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalRunner:
    """This machine, in a subprocess (``python`` defaults to the interpreter running slimwhisper)."""

    python: str = sys.executable
    root: str = "~/.cache/slimwhisper/device-stage"
    label: str = "local"

    def exec(self, argv: list[str], *, stdin: bytes | None = None, timeout: float) -> ExecResult:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            return ExecResult(127, b"", f"{argv[0]}: not found ({exc})")
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{self.label}: {shlex.join(argv[:2])} ... did not finish within {timeout:.0f} s") from exc
        return ExecResult(done.returncode, done.stdout, done.stderr.decode(errors="replace"))

    def explain(self, result: ExecResult, what: str) -> DeviceError:
        return DeviceError(f"{self.label}: {what} failed (exit {result.returncode})", _tail(result.stderr))


def _tail(text: str, lines: int = 6) -> list[str]:
    return [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]


def _query(url: str) -> tuple[object, dict[str, str]]:
    parts = urlsplit(url)
    q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts, q


def check_options(q: dict[str, str], allowed: Iterable[str], url: str) -> None:
    bad = sorted(set(q) - set(allowed))
    if bad:
        raise DeviceError(f"--device {url}: unknown option(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")
    python = q.get("python")
    if python is not None and (not python or python.startswith("~")):
        raise DeviceError(f"--device {url}: python= must be an absolute path or a command on the device's PATH "
                          "(~ is not expanded)")


def local_runner(url: str) -> LocalRunner:
    _parts, q = _query(url)
    check_options(q, ("python", "root"), url)
    return LocalRunner(python=q.get("python") or sys.executable, root=q.get("root") or LocalRunner.root)


RunnerFactory = Callable[[str], Runner]
RUNNERS: dict[str, RunnerFactory] = {"local": local_runner}


def register_runner(scheme: str, factory: RunnerFactory) -> None:
    RUNNERS[scheme] = factory


# ---- what every runner does ---------------------------------------------------------------------
def check_device(runner: Runner, host_versions: dict[str, str] | None = None) -> dict:
    """The device's Python, numpy and onnxruntime; raises with exact install advice when one is missing."""
    res = runner.exec([runner.python, "-c", CHECK_CODE], timeout=CHECK_TIMEOUT_S)
    if res.returncode == 127 or (res.returncode != 0 and "not found" in res.stderr.lower()):
        raise DeviceError(f"{runner.label}: {runner.python} is not installed there",
                          [f"on Debian / Raspberry Pi OS: sudo apt install python3 python3-venv "
                           f"(or point python= at an interpreter: --device '{runner.label}?python=/usr/bin/python3')"])
    if res.returncode != 0:
        raise runner.explain(res, "checking Python")
    try:
        info = json.loads(res.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise DeviceError(f"{runner.label}: unreadable answer from the dependency check: {res.stdout[:200]!r}") from exc
    missing = [m for m in ("numpy", "onnxruntime") if not info.get(m)]
    if missing:
        pins = host_versions or {}
        pkgs = " ".join(f"{m}=={pins[m]}" if m in pins else m for m in ("numpy", "onnxruntime"))
        why = "; ".join(f"{m}: {info.get(m + '_error')}" for m in missing)
        raise DeviceError(f"{runner.label}: {', '.join(missing)} missing for {runner.python} "
                          f"(Python {info.get('python')}, {info.get('machine')}): {why}",
                          [f"on the device: {runner.python} -m venv ~/slimwhisper-venv && "
                           f"~/slimwhisper-venv/bin/pip install {pkgs}",
                           f"then: --device '{runner.label}?python=/home/USER/slimwhisper-venv/bin/python'"])
    return info


def tar_bytes(files: Iterable[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, arcname in sorted(files, key=lambda f: f[1]):
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def digest_of(files: Iterable[tuple[Path, str]]) -> str:
    h = hashlib.sha256()
    for path, arcname in sorted(files, key=lambda f: f[1]):
        h.update(arcname.encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Staged:
    path: str  # on the device
    digest: str
    reused: bool
    bytes: int


def stage(runner: Runner, kind: str, files: list[tuple[Path, str]], timeout: float = RUN_TIMEOUT_S) -> Staged:
    """Upload ``files`` (path, name there) unless an identical upload is already on the device."""
    digest = digest_of(files)
    size = sum(p.stat().st_size for p, _ in files)
    have = runner.exec([runner.python, "-c", HAVE_CODE, runner.root, kind, digest], timeout=CHECK_TIMEOUT_S)
    if have.returncode != 0:
        raise runner.explain(have, f"looking for an earlier {kind} upload")
    answer = have.stdout.decode().strip()
    if answer and answer != "missing":
        return Staged(answer, digest, True, size)
    put = runner.exec([runner.python, "-c", UNPACK_CODE, runner.root, kind, digest], stdin=tar_bytes(files),
                      timeout=timeout)
    if put.returncode != 0:
        raise runner.explain(put, f"uploading the {kind} ({size / 1e6:.1f} MB)")
    return Staged(put.stdout.decode().strip().splitlines()[-1], digest, False, size)


def runtime_files() -> list[tuple[Path, str]]:
    """The torch-free runtime as it ships: the runtime package, errors.py and the device script."""
    files = [(PACKAGE / "__init__.py", "slimwhisper/__init__.py"), (PACKAGE / "errors.py", "slimwhisper/errors.py"),
             (DEVBENCH, "devbench.py")]
    files += [(p, f"slimwhisper/{p.relative_to(PACKAGE).as_posix()}") for p in sorted((PACKAGE / "runtime").rglob("*.py"))]
    return files


def folder_files(folder: Path) -> list[tuple[Path, str]]:
    return [(p, p.relative_to(folder).as_posix()) for p in sorted(folder.rglob("*")) if p.is_file()]
