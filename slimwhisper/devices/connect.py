"""``--device`` -> a runner: the schemes are a registry (``local`` in runners, ``ssh`` in ssh)."""

from __future__ import annotations

import slimwhisper.devices.ssh  # noqa: F401  (registers "ssh")
from slimwhisper.devices.profile import DeviceError
from slimwhisper.devices.runners import RUNNERS, Runner


def is_runner_url(device: str) -> bool:
    return device == "local" or "://" in device


def runner_for(device: str) -> Runner:
    """``local``, ``local://...`` or ``ssh://...`` -> a runner (schemes are a registry)."""
    scheme = "local" if device == "local" else device.split("://", 1)[0] if "://" in device else ""
    if scheme not in RUNNERS:
        raise DeviceError(f"--device {device}: unknown runner {scheme or device!r}; give one of "
                          f"{', '.join(s + '://' for s in sorted(RUNNERS))} (or a profile name with --estimate)")
    return RUNNERS[scheme](device)
