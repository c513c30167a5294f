"""The SSH runner against a REAL OpenSSH sshd on 127.0.0.1 (its own host key, authorized_keys and
config), started in a private mount namespace (``unshare -m`` + a tmpfs on /run for /run/sshd,
so the host's /run is never touched) and stopped after the module. Skips with a reason where
sshd, ssh, ssh-keygen or unshare is missing, or namespaces are not permitted.

Covers the whole path end to end (``slimwhisper bench BUNDLE --device ssh://... --profile rpi5``:
dependency check, upload of runtime + bundle + clips, reuse by hash, the run there, JSON back,
the report) and the bad inputs: refused key, unknown and changed host key, unreachable port,
a device Python without numpy/onnxruntime. Every connection goes to 127.0.0.1 only.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import assert_user_error, write_manifest
from typer.testing import CliRunner

from slimwhisper.cli import _register, app
from slimwhisper.devices.profile import DeviceError
from slimwhisper.devices.runners import check_device
from slimwhisper.devices.ssh import SSHRunner, ssh_runner

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
TOOLS = {name: shutil.which(name) for name in ("ssh", "ssh-keygen", "unshare")}
START_SCRIPT = 'mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd && exec "$0" -D -e -f "$1"'


def _why_skip() -> str | None:
    if SSHD is None:
        return "OpenSSH server not installed (Debian: apt-get install openssh-server; `make test` tries)"
    missing = [n for n, p in TOOLS.items() if p is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian: openssh-client, util-linux)"
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare -m) holding /run/sshd"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    reason = _why_skip()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("sshd")
    host_key, client_key, other_key = _keygen(d / "host_key"), _keygen(d / "client_key"), _keygen(d / "other_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port, user = _free_port(), getpass.getuser()
    cfg = d / "sshd_config"
    cfg.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PidFile none", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "StrictModes no", f"AllowUsers {user}",
        "LogLevel VERBOSE", ""]))
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text().split(' ', 2)[0]} "
                     f"{(d / 'host_key.pub').read_text().split()[1]}\n")
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 - sshd writes to it until teardown
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", START_SCRIPT, SSHD, str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            log.close()
            pytest.skip(f"sshd could not start here: {(d / 'sshd.log').read_text()[-400:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.terminate()
        pytest.skip("sshd did not listen within 15 s")
    yield {"port": port, "user": user, "key": client_key, "other_key": other_key, "known_hosts": known, "dir": d,
           "stage": d / "stage"}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _url(s, **over) -> str:
    q = {"key": s["key"], "known_hosts": s["known_hosts"], "python": sys.executable, "root": s["stage"],
         "connect_timeout": 5, **over}
    return f"ssh://{s['user']}@127.0.0.1:{s['port']}?" + "&".join(f"{k}={v}" for k, v in q.items())


def _cli(args):
    _register()
    return CliRunner().invoke(app, args)


def test_arguments_reach_the_device_exactly_as_a_list(sshd, tmp_path):
    runner = ssh_runner(_url(sshd))
    canary = tmp_path / "canary"
    tricky = ["a b", f"$(touch {canary})", "; touch " + str(canary), "'quoted'", "*"]
    res = runner.exec([runner.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *tricky], timeout=30)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == tricky
    assert not canary.exists()  # nothing was interpreted by a shell on either side


def test_ssh_bench_end_to_end_and_upload_reuse(sshd, tiny_bundle, tmp_path):
    _loaded, bundle = tiny_bundle
    data = write_manifest(tmp_path / "data", n=1)
    out = tmp_path / "rep"
    args = ["bench", str(bundle), "--device", _url(sshd), "--profile", "rpi5", "--data", str(data), "--repeat", "2",
            "--threads", "1", "--out", str(out)]
    first = _cli(args)
    assert first.exit_code == 0, first.output + first.stderr
    assert "uploaded" in first.stderr and "reused" not in first.stderr
    report = json.loads((out / "report.json").read_text())
    entry = report["entries"][0]
    # the runtime that ran is the uploaded copy, reached over ssh, not this checkout
    assert Path(entry["device"]["runtime_from"]).is_relative_to(sshd["stage"] / "runtime")
    assert entry["timing"]["encoder_ms_per_window"]["n"] == 2 and entry["timing"]["encoder_ms_per_window"]["median"] > 0
    assert entry["timing"]["decoder_ms_per_token"]["median"] > 0
    assert entry["estimate"]["label"] == "estimate (uncalibrated)"  # shown beside, labelled, never in place of it
    assert "estimate (uncalibrated)" in first.stdout and "(measured)" in first.stdout
    second = _cli([*args, "--force"])
    assert second.exit_code == 0, second.output + second.stderr
    assert second.stderr.count("reused (same hash)") == 3  # runtime, bundle and clips


def test_refused_key(sshd):
    with pytest.raises(DeviceError, match="refused the key") as exc:
        check_device(ssh_runner(_url(sshd, key=sshd["other_key"])))
    assert "ssh-copy-id" in str(exc.value)


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DeviceError, match="host key is not in") as exc:
        check_device(ssh_runner(_url(sshd, known_hosts=empty)))
    assert "ssh-keyscan" in str(exc.value) and "accept-new" in str(exc.value)


def test_changed_host_key_is_refused_and_explained(sshd, tmp_path):
    impostor = _keygen(tmp_path / "impostor")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd['port']} {' '.join(impostor.with_suffix('.pub').read_text().split()[:2])}\n")
    for mode in ("yes", "accept-new"):  # accept-new trusts a NEW host, never a changed key
        with pytest.raises(DeviceError, match="not the one recorded") as exc:
            check_device(ssh_runner(_url(sshd, known_hosts=kh, host_key=mode)))
        assert "ssh-keygen -R" in str(exc.value) and "intercepting" in str(exc.value)


def test_device_without_onnxruntime_says_what_to_install(sshd, tmp_path):
    bare = tmp_path / "bare-venv"  # a real Python with nothing installed, as on a fresh Pi
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(DeviceError) as exc:
        check_device(ssh_runner(_url(sshd, python=bare / "bin" / "python")), {"numpy": "2.0", "onnxruntime": "1.31.1"})
    text = str(exc.value)
    assert "numpy, onnxruntime missing" in text
    assert "pip install numpy==2.0 onnxruntime==1.31.1" in text


def test_missing_python_on_device(sshd):
    with pytest.raises(DeviceError, match="not installed there"):
        check_device(ssh_runner(_url(sshd, python="/nonexistent/python3")))


def test_unreachable_port_is_one_user_error(tmp_path):
    if TOOLS["ssh"] is None:
        pytest.skip("ssh client not installed")
    port = _free_port()  # nothing listens there
    kh = tmp_path / "kh"
    kh.write_text("")
    result = _cli(["bench", str(tmp_path / "bundle"), "--device", f"ssh://nobody@127.0.0.1:{port}?known_hosts={kh}&connect_timeout=3",
                   "--data", str(write_manifest(tmp_path / "d", n=1)), "--out", str(tmp_path / "o")])
    assert_user_error(result, "unreachable (connection refused)")


def test_host_key_checking_cannot_be_turned_off():
    with pytest.raises(DeviceError, match="never turned off"):
        SSHRunner(host="127.0.0.1", host_key="no")
    argv = SSHRunner(host="127.0.0.1", port=2222).ssh_argv(["python3", "-c", "print(1)"])
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert argv[-3:] == ["--", "127.0.0.1", "python3 -c 'print(1)'"]
    with pytest.raises(DeviceError, match="not a host name"):
        SSHRunner(host="-oProxyCommand=evil")
