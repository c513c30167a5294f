"""The SSH runner: OpenSSH's ``ssh`` client, host-key checking on, argument lists only.

``ssh://[user@]host[:port]?key=PATH&known_hosts=PATH&python=CMD&root=DIR&host_key=yes|accept-new
&connect_timeout=S&timeout=S``. Host keys are checked strictly (``StrictHostKeyChecking=yes``)
unless the user opts in to ``host_key=accept-new`` (trust on first use, never on change); they
are never ignored. ``BatchMode=yes``: no password or passphrase prompt ever blocks a run.

The command for the device is built as an argument list and quoted with ``shlex.join`` (ssh
hands the remote side one string, so every argument is quoted, never pasted in); ssh itself is
run from an argument list, never through a local shell.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from slimwhisper.devices.profile import DeviceError
from slimwhisper.devices.runners import ExecResult, _query, _tail, check_options, register_runner

HOST_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-:]*$")
USER_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
HOST_KEY_MODES = ("yes", "accept-new")
SSH_FAILED = 255  # ssh's own exit status (the remote command's status is passed through otherwise)


@dataclass(frozen=True)
class SSHRunner:
    host: str
    user: str | None = None
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None
    host_key: str = "yes"
    python: str = "python3"
    root: str = "~/.cache/slimwhisper-device"
    connect_timeout: float = 10.0
    label: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not HOST_OK.match(self.host or ""):
            problems.append(f"host {self.host!r} is not a host name or address")
        if self.user is not None and not USER_OK.match(self.user):
            problems.append(f"user {self.user!r} is not a valid user name")
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            problems.append(f"port must be 1-65535, got {self.port!r}")
        if self.host_key not in HOST_KEY_MODES:
            problems.append(f"host_key must be one of {', '.join(HOST_KEY_MODES)} (checking is never turned off), "
                            f"got {self.host_key!r}")
        for name in ("key", "known_hosts"):
            value = getattr(self, name)
            if value is not None and name == "key" and not Path(value).expanduser().is_file():
                problems.append(f"key {value} does not exist")
        if not self.connect_timeout > 0:
            problems.append("connect_timeout must be > 0")
        if problems:
            raise DeviceError("invalid ssh device", problems)
        if not self.label:
            who = f"{self.user}@" if self.user else ""
            object.__setattr__(self, "label", f"ssh://{who}{self.host}" + (f":{self.port}" if self.port != 22 else ""))

    def ssh_argv(self, remote: list[str]) -> list[str]:
        argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={self.host_key}",
                "-o", f"ConnectTimeout={int(max(1, self.connect_timeout))}", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=3", "-p", str(self.port)]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).expanduser()}"]
        if self.key:
            argv += ["-i", str(Path(self.key).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, "--", self.host, shlex.join(remote)]

    def exec(self, argv: list[str], *, stdin: bytes | None = None, timeout: float) -> ExecResult:
        cmd = self.ssh_argv(argv)
        try:
            done = subprocess.run(cmd, input=stdin if stdin is not None else b"", capture_output=True,
                                  timeout=timeout + self.connect_timeout, check=False)
        except FileNotFoundError as exc:
            raise DeviceError("the OpenSSH client 'ssh' is not installed here",
                              ["Debian/Ubuntu: apt-get install openssh-client"]) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{self.label}: {shlex.join(argv[:2])} ... did not finish within "
                              f"{timeout:.0f} s (raise ?timeout=SECONDS)") from exc
        res = ExecResult(done.returncode, done.stdout, done.stderr.decode(errors="replace"))
        if res.returncode == SSH_FAILED:
            raise self.explain(res, "connecting")
        return res

    def explain(self, result: ExecResult, what: str) -> DeviceError:
        return classify(self, result.stderr, what, result.returncode)


def classify(runner: SSHRunner, stderr: str, what: str, rc: int) -> DeviceError:
    """Turn ssh's stderr into one error that says what happened and what to do."""
    kh = runner.known_hosts or "~/.ssh/known_hosts"
    target = runner.host if runner.port == 22 else f"[{runner.host}]:{runner.port}"
    low = stderr.lower()
    if "remote host identification has changed" in low or "host key for" in low and "has changed" in low:
        return DeviceError(
            f"{runner.label}: refused: the device's host key is not the one recorded in {kh}", [
                "either the device was reinstalled (new keys) or someone is intercepting the connection",
                "check the new fingerprint on the device's own console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
                f"only if it matches, forget the old key: ssh-keygen -R '{target}' -f {kh}"])
    if "host key verification failed" in low or "no " in low and "host key is known" in low:
        return DeviceError(
            f"{runner.label}: refused: the device's host key is not in {kh} (host-key checking is on)", [
                f"add it after comparing its fingerprint with the device's: ssh-keyscan -p {runner.port} "
                f"{runner.host} >> {kh}",
                "or trust it on first use: add ?host_key=accept-new to --device"])
    if "permission denied" in low:
        who = runner.user or "the local user name"
        return DeviceError(
            f"{runner.label}: the device refused the key for user {who}", [
                f"key: {runner.key or 'ssh defaults (~/.ssh/id_*) and the agent'}; password prompts are off (BatchMode)",
                f"install it on the device: ssh-copy-id -i {runner.key or '~/.ssh/id_ed25519'}.pub -p {runner.port} "
                f"{runner.user + '@' if runner.user else ''}{runner.host}"])
    for needle in ("connection refused", "timed out", "no route to host", "could not resolve", "network is unreachable",
                   "name or service not known", "connection closed", "connection reset"):
        if needle in low:
            return DeviceError(f"{runner.label}: unreachable ({needle}) on port {runner.port}", [
                "is the device on, on this network, and running sshd? try: ssh -p "
                f"{runner.port} {runner.user + '@' if runner.user else ''}{runner.host} true"] + _tail(stderr, 2))
    return DeviceError(f"{runner.label}: {what} failed (exit {rc})", _tail(stderr) or ["(no message from ssh)"])


def ssh_runner(url: str) -> SSHRunner:
    parts, q = _query(url)
    check_options(q, ("key", "known_hosts", "python", "root", "host_key", "connect_timeout", "timeout"), url)
    if not parts.hostname:
        raise DeviceError(f"--device {url}: give ssh://[user@]host[:port]")
    try:
        port = parts.port or 22
        timeout = float(q.get("connect_timeout", 10))
    except ValueError as exc:
        raise DeviceError(f"--device {url}: {exc}") from exc
    return SSHRunner(host=parts.hostname, user=unquote(parts.username) if parts.username else None, port=port,
                     key=q.get("key"), known_hosts=q.get("known_hosts"), host_key=q.get("host_key", "yes"),
                     python=q.get("python", "python3"), root=q.get("root", SSHRunner.root), connect_timeout=timeout)


def run_timeout(url: str, default: float) -> float:
    _parts, q = _query(url)
    try:
        return float(q["timeout"]) if "timeout" in q else default
    except ValueError as exc:
        raise DeviceError(f"--device {url}: timeout must be seconds") from exc


register_runner("ssh", ssh_runner)
