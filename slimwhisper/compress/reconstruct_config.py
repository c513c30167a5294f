"""The reconstruction stage's typed config and its registered re-fit methods (``RECONSTRUCTORS``).

Kept apart from ``reconstruct.py`` (the sequential walk) so that the CLI, recipes and configs can
build and check a ``ReconstructConfig`` without the walk. A handler gets the dense and current
consumer weights (bias as the last column), the Grams of the pruned inputs (H_pp) and of pruned vs
dense inputs (H_pd), the row count and the kept columns, and returns the re-fitted kept columns +
bias (``solve.py`` has the formulas). Adding a method is one ``register_reconstructor`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from slimwhisper.compress.solve import bias_fit, refit
from slimwhisper.errors import UserError, raise_problems


class ReconstructError(UserError, ValueError):
    """Reconstruction cannot run as configured (unknown method, too little calibration data, ...)."""


@dataclass(frozen=True)
class Reconstructor:
    fn: Callable  # (W_dense~, W_cur~, H_pp, H_pd, rows, keep, config) -> W'~ (out x |keep|+1)
    needs_stats: bool
    describe: str
    # A least-squares re-fit of the kept weights (the anchor flag of ``solve.refit``), None if not one:
    # such a method needs enough calibration rows and re-selects from the full re-fit W*.
    anchor: bool | None = None


RECONSTRUCTORS: dict[str, Reconstructor] = {}
TARGETS = ("layer", "stream")


def register_reconstructor(name: str, needs_stats: bool, describe: str, anchor: bool | None = None):
    def wrap(fn):
        if name in RECONSTRUCTORS:
            raise ValueError(f"reconstructor {name!r} registered twice")
        RECONSTRUCTORS[name] = Reconstructor(fn, needs_stats, describe, anchor)
        return fn

    return wrap


@dataclass(frozen=True)
class ReconstructConfig:
    method: str = "none"  # RECONSTRUCTORS: none | bias | lstsq | anchored
    damp: float = 0.01  # lambda = damp x mean diag(H)
    sequential: bool = True
    reselect: bool = True  # re-choose each block's groups on sequential stats (activation-aware scores)
    # Calibration rows needed per kept column of a re-fitted layer (lstsq). Measured on tiny.en at 25%:
    # 64 utterances (~1,400 decoder rows for 1,537 fc2 inputs, under 1 row per column) gave 8.87% WER on
    # ljspeech/dev, 256 utterances (~5,500 rows) 6.70% (dense 5.89%): an under-determined re-fit fits the
    # calibration tokens, not the layer. With sequential statistics the full re-fit W* is then no longer
    # the dense W either, which is what made the sequential walk worse than dense Grams at 64 utterances.
    min_rows: float = 2.0
    damp_grid: tuple[float, ...] = ()  # non-empty: each block's damping by 2-fold cross-validation among these
    target: str = "layer"  # TARGETS: the dense consumer output, or the dense residual stream after the block
    refit_all: bool = False  # sequential: re-fit every consumer, also those of blocks that lose nothing

    def __post_init__(self) -> None:
        problems = []
        object.__setattr__(self, "damp_grid", tuple(self.damp_grid) if isinstance(self.damp_grid, (list, tuple)) else self.damp_grid)
        if not isinstance(self.damp_grid, tuple) or any(
            isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < 10 for d in self.damp_grid
        ):
            problems.append(f"reconstruct.damp_grid must be numbers in (0, 10), got {self.damp_grid!r}")
        elif self.damp_grid and self.method in RECONSTRUCTORS and RECONSTRUCTORS[self.method].anchor is None:
            problems.append(f"reconstruct.damp_grid chooses a least-squares damping; --reconstruct {self.method} has none")
        if self.method not in RECONSTRUCTORS:
            problems.append(f"unknown reconstruction {self.method!r}; choose from {', '.join(sorted(RECONSTRUCTORS))}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 < self.damp < 10:
            problems.append(f"reconstruct.damp must be a number in (0, 10), got {self.damp!r}")
        if self.target not in TARGETS:
            problems.append(f"unknown reconstruction target {self.target!r}; choose from {', '.join(TARGETS)}")
        needs_walk = [n for n, on in (("--reconstruct-target stream", self.target == "stream"), ("--refit-all", self.refit_all is True)) if on]
        if needs_walk and not self.sequential:
            problems.append(f"{' and '.join(needs_walk)} need sequential statistics (drop --dense-stats)")
        if needs_walk and self.method in RECONSTRUCTORS and not RECONSTRUCTORS[self.method].needs_stats:
            problems.append(f"{' and '.join(needs_walk)} need a re-fit (--reconstruct bias, lstsq or anchored), not {self.method!r}")
        for name in ("sequential", "reselect", "refit_all"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"reconstruct.{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, (int, float)) or self.min_rows < 0:
            problems.append(f"reconstruct.min_rows must be a number >= 0, got {self.min_rows!r}")
        raise_problems(ReconstructError, "invalid reconstruction config", problems)

    @property
    def active(self) -> bool:
        return RECONSTRUCTORS[self.method].needs_stats

    @property
    def least_squares(self) -> bool:
        return RECONSTRUCTORS[self.method].anchor is not None

    @property
    def anchor(self) -> bool:
        return bool(RECONSTRUCTORS[self.method].anchor)

    def to_dict(self) -> dict:
        return asdict(self)


@register_reconstructor("none", needs_stats=False, describe="keep the surviving weights unchanged")
def _none(W_dense, W_cur, H_pp, H_pd, rows, keep, config):
    return W_cur[:, list(keep) + [W_cur.shape[1] - 1]]


@register_reconstructor("bias", needs_stats=True, describe="FLAP bias compensation (mean output matched)")
def _bias(W_dense, W_cur, H_pp, H_pd, rows, keep, config):
    kept = W_cur[:, list(keep)].to(torch.float64)
    return torch.cat([kept, bias_fit(W_dense, H_pd, rows, kept, keep)[:, None]], 1)


@register_reconstructor("lstsq", needs_stats=True, anchor=False,
                        describe="least-squares re-fit of kept columns + bias to the dense output")  # fmt: skip
@register_reconstructor("anchored", needs_stats=True, anchor=True,
                        describe="least-squares re-fit with the ridge toward the dense weights (damp sets its strength)")  # fmt: skip
def _lstsq(W_dense, W_cur, H_pp, H_pd, rows, keep, config):
    return refit(W_dense, H_pp, H_pd, keep, config.damp, config.anchor)
