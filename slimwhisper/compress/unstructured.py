"""One-shot unstructured magnitude pruning — the baseline structured pruning is compared with.

Sets the smallest-|w| entries of the selected ``nn.Linear`` weights to exactly 0, permanently (no
masks, no hooks, no parametrizations), as the Whisper pruning comparisons do (arXiv 2511.08092).
Shapes do not change, so the model is NOT smaller or faster on dense hardware: every report says
"unstructured (no size change)"; only the count of non-zero weights drops.

Which weights are ranked together is a registered *scope* (``SCOPES``): each matrix on its own,
each selected component jointly, or one global ranking over everything selected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from slimwhisper.compress.groups import ATTN_ATTR, layers_of
from slimwhisper.errors import UserError

LABEL = "unstructured (no size change)"


class UnstructuredError(UserError, ValueError):
    """An unstructured pruning config is invalid; the message lists every problem."""

LINEARS = {
    "self_attn": tuple(f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")),
    "cross_attn": tuple(f"{ATTN_ATTR['cross_attn']}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")),
    "ffn": ("fc1", "fc2"),
}
# The allocation selector syntax (``compress.allocate``: ``encoder[-4:].self_attn``), plus side
# ``all`` and an optional component (every Linear of the chosen layers).
_SELECTOR = re.compile(r"^(?P<side>encoder|decoder|all)(?:\[(?P<a>-?\d*)(?P<colon>:)?(?P<b>-?\d*)\])?"
                       r"(?:\.(?P<comp>self_attn|cross_attn|ffn))?$")


@dataclass(frozen=True)
class Selector:
    """``SIDE[LAYERS][.COMPONENT]``: e.g. ``decoder.self_attn``, ``encoder[-2:]``, ``decoder[0].ffn``, ``all``."""

    side: str  # encoder | decoder | all
    layers_text: str = ""  # "" (every layer), "[-2:]", "[0]", ... as written
    component: str | None = None  # self_attn | cross_attn | ffn; None = every Linear of the layer

    @classmethod
    def parse(cls, text: str) -> Selector:
        m = _SELECTOR.match(text.strip())
        if m is None or (m["a"] == "" and m["colon"] is None):
            raise UnstructuredError(
                f"bad component selector {text!r}; use SIDE[LAYERS][.COMPONENT] with SIDE encoder|decoder|all and "
                "COMPONENT self_attn|cross_attn|ffn, e.g. decoder.self_attn, encoder[-2:].ffn, decoder[0], all"
            )
        layers = text.strip()[len(m["side"]):].split(".")[0] if "[" in text else ""
        return cls(m["side"], layers, m["comp"])

    def layer_ids(self, n: int) -> list[int]:
        if not self.layers_text:
            return list(range(n))
        inner = self.layers_text[1:-1]
        if ":" not in inner:
            i = int(inner)
            return [i if i >= 0 else n + i] if -n <= i < n else []
        a, b = inner.split(":")
        return list(range(n))[slice(int(a) if a else None, int(b) if b else None)]

    def __str__(self) -> str:
        return self.side + self.layers_text + (f".{self.component}" if self.component else "")


@dataclass(frozen=True)
class UnstructuredConfig:
    ratio: float  # fraction of the selected weights set to zero
    components: tuple[Selector | str, ...] = ("all",)
    scope: str = "per_component"  # a key of SCOPES

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            problems.append(f"ratio must be a fraction in (0, 1), got {self.ratio!r}")
        if self.scope not in SCOPES:
            problems.append(f"scope {self.scope!r} is unknown; choose from {', '.join(SCOPES)}")
        parsed = []
        for c in self.components:
            try:
                parsed.append(c if isinstance(c, Selector) else Selector.parse(c))
            except ValueError as exc:
                problems.append(str(exc))
        if not self.components:
            problems.append("components is empty; e.g. ('all',) or ('decoder.self_attn', 'encoder[-2:].ffn')")
        if problems:
            raise UnstructuredError("invalid unstructured pruning config", problems)
        object.__setattr__(self, "components", tuple(parsed))

    def to_dict(self) -> dict:
        return {"method": "unstructured-magnitude", "ratio": self.ratio, "scope": self.scope,
                "components": [str(c) for c in self.components]}  # fmt: skip


@dataclass
class UnstructuredReport:
    label: str
    config: dict
    params: int  # total parameters: unchanged by construction
    selected: int  # weights considered
    zeros_before: int  # among the selected
    zeros_after: int
    nonzero_params: int  # whole model, after
    by_component: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def selected_weights(model: nn.Module, selector: Selector) -> dict[str, nn.Parameter]:
    """state_dict name -> weight of every Linear the selector covers."""
    out = {}
    for side in ("encoder", "decoder") if selector.side == "all" else (selector.side,):
        layers = layers_of(model, side)
        comps = (selector.component,) if selector.component else tuple(LINEARS)
        for i in selector.layer_ids(len(layers)):
            for comp in comps:
                if comp == "cross_attn" and side == "encoder":
                    continue
                for lin in LINEARS[comp]:
                    out[f"model.{side}.layers.{i}.{lin}.weight"] = layers[i].get_submodule(lin).weight
    return out


# ---- scopes: which weights are ranked together -----------------------------------------------------


def _per_matrix(chosen: dict[str, dict[str, nn.Parameter]]) -> list[list[nn.Parameter]]:
    return [[w] for weights in chosen.values() for w in weights.values()]


def _per_component(chosen: dict[str, dict[str, nn.Parameter]]) -> list[list[nn.Parameter]]:
    return [list(weights.values()) for weights in chosen.values()]


def _global(chosen: dict[str, dict[str, nn.Parameter]]) -> list[list[nn.Parameter]]:
    unique = {}
    for weights in chosen.values():
        unique.update(weights)
    return [list(unique.values())]


SCOPES: dict[str, Callable[[dict[str, dict[str, nn.Parameter]]], list[list[nn.Parameter]]]] = {
    "per_matrix": _per_matrix,
    "per_component": _per_component,
    "global": _global,
}


@torch.no_grad()
def _zero_smallest(weights: list[nn.Parameter], ratio: float) -> None:
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    k = int(ratio * flat.numel())
    if k == 0:
        return
    # exactly k entries (ties broken by position), ranked jointly across ``weights``
    drop = torch.zeros_like(flat, dtype=torch.bool)
    drop[torch.argsort(flat, stable=True)[:k]] = True
    start = 0
    for w in weights:
        n = w.numel()
        w.masked_fill_(drop[start : start + n].view_as(w), 0.0)
        start += n


def prune_unstructured(model: nn.Module, config: UnstructuredConfig) -> UnstructuredReport:
    """Zero the smallest-magnitude weights in place; returns the zero counts. Shapes are untouched."""
    chosen = {str(sel): selected_weights(model, sel) for sel in config.components}
    unique = {name: w for weights in chosen.values() for name, w in weights.items()}
    if len(unique) < sum(len(w) for w in chosen.values()):
        raise ValueError(f"component selectors overlap ({', '.join(chosen)}); each weight may be selected once")
    zeros_before = sum(int((w == 0).sum()) for w in unique.values())
    for group in SCOPES[config.scope](chosen):
        _zero_smallest(group, config.ratio)
    by_component = {
        name: {"weights": sum(w.numel() for w in ws.values()), "zeros": sum(int((w == 0).sum()) for w in ws.values())}
        for name, ws in chosen.items()
    }
    return UnstructuredReport(
        label=LABEL,
        config=config.to_dict(),
        params=sum(p.numel() for p in model.parameters()),
        selected=sum(w.numel() for w in unique.values()),
        zeros_before=zeros_before,
        zeros_after=sum(int((w == 0).sum()) for w in unique.values()),
        nonzero_params=sum(int((p != 0).sum()) for p in model.parameters()),
        by_component=by_component,
    )
