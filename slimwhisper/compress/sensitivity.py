"""Component sensitivity, as in "Pruning as Regularization" (arXiv 2511.08092).

For each component m (encoder/decoder x layer x {self_attn, cross_attn, ffn}), with theta_m its
parameters (the attention projections q/k/v/o, or fc1+fc2; LayerNorms are not pruned and left
out) and per-utterance gradients g_n of the teacher-forced calibration loss:

* gradient sensitivity  S_g(m) = (1/N) sum_n ||grad_{theta_m} L_n||_2 / ||theta_m||_2
  (how far one step of the loss would move the component, relative to its size);
* Fisher sensitivity    S_h(m) = (1/|I_m|) sum_{j in I_m} F_jj,  F_jj = (1/N) sum_n g_nj^2
  (mean diagonal empirical Fisher, a curvature proxy).

The paper reads such tables to pick what to prune (decoder self-attention came out least
sensitive in their Whisper study); ``slimwhisper sensitivity`` prints it, writes JSON and
optionally a heat map.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from slimwhisper.compress.calib import CalibConfig, CalibExample
from slimwhisper.compress.groups import ATTN_ATTR, SIDES, layers_of, prefix
from slimwhisper.errors import UserError
from slimwhisper.outputs import OutputError, check_output_file

COMPONENTS = ("self_attn", "cross_attn", "ffn")
_FFN_MODULES = ("fc1", "fc2")


class SensitivityError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class SensitivityConfig:
    model: str
    calib: CalibConfig
    out: str | None = None  # JSON path
    plot: str | None = None  # PNG path
    force: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append("model must be a model source such as 'tiny.en' or 'base'")
        if not isinstance(self.calib, CalibConfig):
            problems.append("calib must be a CalibConfig")
        for name in ("out", "plot"):  # both checked before any work (a bad --plot must not follow a written --out)
            path = getattr(self, name)
            if path is not None:
                try:
                    check_output_file(path, force=self.force, option=f"--{name}", inputs=self.calib.datasets)
                except OutputError as exc:
                    problems.append(str(exc))
        if self.plot is not None and not str(self.plot).lower().endswith(".png"):
            problems.append(f"plot must be a .png path, got {self.plot!r}")
        if problems:
            raise SensitivityError("invalid sensitivity config", problems)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SensitivityRow:
    side: str
    layer: int
    component: str
    params: int
    grad: float  # S_g
    fisher: float  # S_h

    @property
    def name(self) -> str:
        return f"{self.side}.{self.layer}.{self.component}"


def component_params(model) -> dict[str, list[str]]:
    """{"encoder.0.self_attn": [param names], ...} for every component of ``model``."""
    named = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, list[str]] = {}
    for side in SIDES:
        for i in range(len(layers_of(model, side))):
            p = prefix(side, i)
            comps = ("self_attn", "cross_attn", "ffn") if side == "decoder" else ("self_attn", "ffn")
            for comp in comps:
                heads = _FFN_MODULES if comp == "ffn" else (ATTN_ATTR[comp],)
                out[f"{side}.{i}.{comp}"] = [n for n in named if any(n.startswith(f"{p}.{h}.") for h in heads)]
    return out


class SensitivityStats:
    """Observer for ``scores.run_pass``: accumulates S_g and S_h per component."""

    def __init__(self, model):
        named = dict(model.named_parameters(remove_duplicate=False))
        self.components = component_params(model)
        self.weights = {n: named[n].detach() for names in self.components.values() for n in names}
        self.norms = {
            m: math.sqrt(sum(float(self.weights[n].float().square().sum()) for n in names))
            for m, names in self.components.items()
        }
        self.sizes = {m: sum(self.weights[n].numel() for n in names) for m, names in self.components.items()}
        self.grad_ratio = dict.fromkeys(self.components, 0.0)
        self.sq_sum = dict.fromkeys(self.components, 0.0)
        self.n = 0

    def update(self, loss: float, grads: dict[str, torch.Tensor]) -> None:
        self.n += 1
        for m, names in self.components.items():
            sq = sum(float(grads[n].float().square().sum()) for n in names)
            self.sq_sum[m] += sq
            self.grad_ratio[m] += math.sqrt(sq) / self.norms[m] if self.norms[m] > 0 else 0.0

    def rows(self) -> list[SensitivityRow]:
        n = max(self.n, 1)
        out = []
        for m in self.components:
            side, layer, comp = m.split(".")
            out.append(
                SensitivityRow(
                    side, int(layer), comp, self.sizes[m], self.grad_ratio[m] / n, self.sq_sum[m] / (n * self.sizes[m])
                )
            )
        return out


def sensitivity_table(loaded, examples: list[CalibExample], progress: bool = True) -> list[SensitivityRow]:
    from slimwhisper.compress.scores import run_pass

    if not examples:
        raise SensitivityError("sensitivity needs at least 1 calibration utterance")
    stats = SensitivityStats(loaded.model)
    run_pass(loaded.model, examples, [stats], progress=progress, label="sensitivity")
    return stats.rows()


def format_table(rows: list[SensitivityRow]) -> str:
    lines = [f"{'component':<26}{'params':>10}{'S_g (grad/weight)':>20}{'S_h (mean Fisher)':>20}"]
    for r in rows:
        lines.append(f"{r.name:<26}{r.params:>10}{r.grad:>20.4e}{r.fisher:>20.4e}")
    return "\n".join(lines)


def write_json(rows: list[SensitivityRow], path: Path, meta: dict) -> None:
    payload = {**meta, "rows": [{**asdict(r), "name": r.name} for r in rows]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    tmp.replace(path)


def plot_heatmap(rows: list[SensitivityRow], path: Path, title: str = "") -> None:
    """2x2 heat maps: rows S_g / S_h, columns encoder / decoder; cells component x layer (log10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(11, 5.5), squeeze=False)
    for r_i, metric in enumerate(("grad", "fisher")):
        for c_i, side in enumerate(SIDES):
            ax = axes[r_i][c_i]
            mine = [r for r in rows if r.side == side]
            comps = [c for c in COMPONENTS if any(r.component == c for r in mine)]
            n_layers = max((r.layer for r in mine), default=-1) + 1
            grid = np.full((len(comps), n_layers), np.nan)
            for r in mine:
                value = getattr(r, metric)
                grid[comps.index(r.component), r.layer] = math.log10(value) if value > 0 else np.nan
            im = ax.imshow(grid, aspect="auto", cmap="viridis")
            ax.set_yticks(range(len(comps)), comps)
            ax.set_xticks(range(n_layers), [str(i) for i in range(n_layers)])
            ax.set_xlabel("layer")
            ax.set_title(f"{side}: log10 {'S_g' if metric == 'grad' else 'S_h'}")
            fig.colorbar(im, ax=ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def run_sensitivity(config: SensitivityConfig, progress: bool = True) -> list[SensitivityRow]:
    """Load the model, calibrate, compute the table; write JSON/PNG when asked."""
    from slimwhisper.compress.calib import prepare
    from slimwhisper.models import load_model

    loaded = load_model(config.model)
    examples = prepare(loaded, config.calib)
    rows = sensitivity_table(loaded, examples, progress=progress)
    meta = {"model": loaded.name, "sha256": loaded.sha256, "n": len(examples), "config": config.to_dict()}
    if config.out:
        write_json(rows, Path(config.out), meta)
    if config.plot:
        plot_heatmap(rows, Path(config.plot), title=f"{loaded.name} sensitivity (N={len(examples)})")
    return rows
