"""The configuration of sensitivity allocation (``sensalloc.py``), in a module of its own so that
``allocate.AllocConfig`` can hold it without importing the allocation machinery (no import cycle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slimwhisper.errors import UserError, check_positive_int, raise_problems

SENS_MEASURES = ("kl", "recon")

class SensAllocError(UserError, ValueError):
    """The sensitivity allocation cannot run as configured."""


@dataclass(frozen=True)
class SensAllocConfig:
    measure: str = "kl"  # kl | recon
    ratio: float = 0.5  # where each block's KL is measured (fraction of its units)
    n: int = 8  # calibration utterances held out of the Grams for the KL measurement (spread evenly)
    max_ratio: float = 0.85  # at most this fraction of a block's units goes
    damp: float = 0.01
    # The KL measurement re-fits each block as the reconstruction will: with the ridge toward the
    # dense weights (``--reconstruct anchored``) or toward zero (``lstsq``). ``prune`` sets it from
    # the reconstruction config, so the curves price the re-fit that is really applied.
    anchor: bool = False
    anchor_damp: float = 0.01  # the anchored re-fit's own damping (ReconstructConfig.damp)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.measure not in SENS_MEASURES:
            problems.append(f"sensitivity.measure must be one of {', '.join(SENS_MEASURES)}, got {self.measure!r}")
        for name in ("ratio", "max_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                problems.append(f"sensitivity.{name} must be in (0, 1), got {v!r}")
        check_positive_int(problems, "sensitivity.n", self.n)
        for name in ("damp", "anchor_damp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 10:
                problems.append(f"sensitivity.{name} must be in (0, 10), got {v!r}")
        if not isinstance(self.anchor, bool):
            problems.append(f"sensitivity.anchor must be true or false, got {self.anchor!r}")
        raise_problems(SensAllocError, "invalid sensitivity allocation", problems)

    def to_dict(self) -> dict:
        return asdict(self)
