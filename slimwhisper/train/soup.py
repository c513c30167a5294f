"""Weight averaging of recovered models (a "uniform model soup", Wortsman et al. 2022, arXiv 2203.05482).

Runs of the same recovery from the same pruned start, differing only in data order (``--seed``),
end in the same loss basin, so the element-wise mean of their weights,
    theta_soup = sum_i w_i theta_i,  sum_i w_i = 1,
is a model of the same shapes that is usually better than each member (the averaging cancels part
of the noise each run's data order put into the weights). Measured here (tiny.en, 35% of layer
parameters, README "Pruning"): two 450-step seeds 6.32 / 6.63% greedy on ljspeech/dev, their soup
6.20%.

Only models with identical shapes (``ArchSpec``) and the same kept vocabulary can be averaged; the
members must also come from the same pruned start (the same pruning record), otherwise their
heads and neurons do not correspond and the mean is meaningless: refused, naming the difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from slimwhisper.errors import UserError, raise_problems


class SoupError(UserError, ValueError):
    """The models cannot be averaged (different shapes, vocabularies or pruned starts)."""


@dataclass(frozen=True)
class SoupConfig:
    members: tuple[str, ...]  # slim folders (or model names) to average
    weights: tuple[float, ...] = ()  # empty: uniform

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(str(m) for m in self.members))
        object.__setattr__(self, "weights", tuple(self.weights))
        problems = []
        if len(self.members) < 2:
            problems.append(f"average needs at least 2 models, got {len(self.members)}")
        if len(set(self.members)) != len(self.members):
            problems.append("the same model is listed twice; list each recovered run once")
        if self.weights:
            if len(self.weights) != len(self.members):
                problems.append(f"{len(self.weights)} weights for {len(self.members)} models; give one per model or none")
            elif any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or math.isinf(w) for w in self.weights):
                problems.append(f"weights must be positive numbers, got {list(self.weights)}")
        raise_problems(SoupError, "invalid average config", problems)

    def normalised(self) -> list[float]:
        w = self.weights or (1.0,) * len(self.members)
        return [x / sum(w) for x in w]

    def to_dict(self) -> dict:
        return {**asdict(self), "members": list(self.members), "weights": self.normalised()}


def _mismatches(first, other, name: str) -> list[str]:
    out = []
    if first.spec != other.spec:
        out.append(f"{name} has other layer shapes than {first.name} (ArchSpec differs): only runs from the same pruned start average")
    rec_a = (first.extra.get("pruning") or {}).get("record") or {}
    rec_b = (other.extra.get("pruning") or {}).get("record") or {}
    if [rec_a.get(k) for k in ("encoder", "decoder")] != [rec_b.get(k) for k in ("encoder", "decoder")]:
        out.append(f"{name} kept other heads/neurons than {first.name} (pruning records differ): their weights do not correspond")
    va, vb = getattr(first.model, "slim_vocab", None), getattr(other.model, "slim_vocab", None)
    if (va is None) != (vb is None) or (va is not None and list(va.kept) != list(vb.kept)):
        out.append(f"{name} keeps another vocabulary than {first.name}")
    return out


def average_models(config: SoupConfig, log=print):
    """Load the members, check they correspond, return the first one (a ``LoadedModel``) holding
    the weighted mean of all members' floating-point tensors."""
    import torch

    from slimwhisper.models import load_model

    loaded = [load_model(m) for m in config.members]
    raise_problems(SoupError, "these models cannot be averaged",
                   [p for m, other in zip(config.members[1:], loaded[1:], strict=True) for p in _mismatches(loaded[0], other, m)])  # fmt: skip
    weights = config.normalised()
    states = [ld.model.state_dict() for ld in loaded]
    seen: set[int] = set()
    with torch.no_grad():
        for key, tensor in states[0].items():
            if tensor.data_ptr() in seen:  # a tied tensor (embedding = output projection): averaged once
                continue
            seen.add(tensor.data_ptr())
            if tensor.is_floating_point():
                tensor.copy_(sum(w * s[key].to(torch.float64) for w, s in zip(weights, states, strict=True)).to(tensor.dtype))
    log(f"averaged {len(loaded)} models ({', '.join(f'{w:.2f}' for w in weights)})")
    return loaded[0]


def save_soup(soup, config: SoupConfig, out: str | Path, force: bool = False) -> Path:
    """Save as a slim folder: the first member's record and configs, plus ``average`` (members, weights)."""
    from slimwhisper.models.slimdir import appended_configs, save_slim

    configs = appended_configs(soup, "average", config.to_dict())
    return save_slim(soup, Path(out), record=getattr(soup.model, "slim_record", None), configs=configs, force=force)
