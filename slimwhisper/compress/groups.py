"""What can be removed together: coupled parameter groups of a (possibly already pruned) Whisper.

Like Torch-Pruning's dependency groups, a ``Group`` lists every slice of every weight that has to go
together so the model stays well-formed. The group shapes follow "The silence of the weights"
(arXiv 2509.26207):

* ``head``   — one attention head: its Q and K rows, V rows (+ q/v bias entries) and O columns.
* ``qk``     — a Q/K channel: row c of q_proj (+ q bias entry) and of k_proj. With the "shared"
  pattern channel c is removed from EVERY head at once; with "per_head" from one head only.
  Because QK^T = sum_c q_c k_c, dropping a channel drops exactly one term of each score.
* ``vo``     — a V/O channel: v row + v bias entry + out_proj column (same two patterns).
* ``neuron`` — one FFN neuron: fc1 row + fc1 bias entry + fc2 column.
* ``layer``  — every parameter of one encoder/decoder layer (the residual stream skips it).

Names use positions in the CURRENT model, e.g. ``encoder.3.self_attn.head.5``,
``encoder.2.self_attn.qk.7`` (shared), ``encoder.2.self_attn.qk.h1.7`` (per head),
``decoder.0.ffn.neuron.17``, ``decoder.1.layer``. Scoring which groups to remove is not done here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
from torch import nn
from slimwhisper.errors import UserError

Side = Literal["encoder", "decoder"]
Component = Literal["self_attn", "cross_attn", "ffn", "layer"]
Kind = Literal["head", "qk", "vo", "neuron", "layer"]
ChannelPattern = Literal["shared", "per_head"]

SIDES: tuple[str, ...] = get_args(Side)
COMPONENTS: tuple[str, ...] = get_args(Component)
KINDS: tuple[str, ...] = get_args(Kind)
ATTN_COMPONENTS = ("self_attn", "cross_attn")
# Which kinds make sense for which component.
KINDS_OF: dict[str, tuple[str, ...]] = {
    "self_attn": ("head", "qk", "vo"),
    "cross_attn": ("head", "qk", "vo"),
    "ffn": ("neuron",),
    "layer": ("layer",),
}
# transformers' module attribute holding each attention component
ATTN_ATTR = {"self_attn": "self_attn", "cross_attn": "encoder_attn"}


class GroupError(UserError, ValueError):
    """A group name or group space is invalid; the message lists every problem and what is valid."""


@dataclass(frozen=True)
class ParamSlice:
    param: str  # full state_dict name, e.g. "model.encoder.layers.3.self_attn.q_proj.weight"
    dim: int  # 0: rows (and bias entries), 1: columns
    index: tuple[int, ...]


@dataclass(frozen=True)
class Group:
    name: str
    side: Side
    layer: int  # position in the current model
    component: Component
    kind: Kind
    head: int | None  # head of a per-head channel or of a head group; None otherwise
    index: int  # head / channel / neuron number (layer number for layer groups)
    slices: tuple[ParamSlice, ...]
    numel: int = 0  # parameters removed with this group (filled by enumerate_groups)

    @property
    def block(self) -> str:
        """The unit a guard talks about, e.g. ``encoder.3.self_attn`` or ``decoder.1.layer``."""
        return f"{self.side}.{self.layer}.{self.component}"

    @property
    def params(self) -> int:
        return self.numel


@dataclass(frozen=True)
class GroupSpace:
    """Which groups a pruning method may choose from."""

    kinds: frozenset[Kind]
    channel_pattern: ChannelPattern = "shared"
    components: frozenset[str] | None = None  # e.g. {"encoder.self_attn", "decoder.ffn"}; None = all

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", frozenset(self.kinds))
        if self.components is not None:
            object.__setattr__(self, "components", frozenset(self.components))
        problems = []
        if not self.kinds:
            problems.append("kinds is empty; choose from " + ", ".join(KINDS))
        problems += [f"unknown kind {k!r}; choose from {', '.join(KINDS)}" for k in sorted(self.kinds - set(KINDS))]
        if self.channel_pattern not in get_args(ChannelPattern):
            problems.append(f"channel_pattern must be 'shared' or 'per_head', got {self.channel_pattern!r}")
        valid = {f"{s}.{c}" for s in SIDES for c in COMPONENTS} - {"encoder.cross_attn"}
        for comp in sorted(self.components or ()):
            if comp not in valid and comp not in COMPONENTS:
                problems.append(f"unknown component {comp!r}; use one of {', '.join(sorted(valid))} (or no side)")
        if problems:
            raise GroupError("invalid group space", problems)

    def wants(self, side: str, component: str) -> bool:
        if self.components is None:
            return True
        return f"{side}.{component}" in self.components or component in self.components


# ---- reading the model --------------------------------------------------------------------------


def layers_of(model: nn.Module, side: str) -> nn.ModuleList:
    """The encoder or decoder layer list of a ``WhisperForConditionalGeneration``."""
    return getattr(model.model, side).layers


def attn_dims(attn: nn.Module) -> tuple[int, int, int]:
    """(heads, qk_dim, vo_dim) of a WhisperAttention or SlimWhisperAttention."""
    heads = attn.num_heads
    return heads, attn.q_proj.out_features // heads, attn.v_proj.out_features // heads


def prefix(side: str, layer: int) -> str:
    return f"model.{side}.layers.{layer}"


def _rows(param: str, idx: list[int]) -> ParamSlice:
    return ParamSlice(param, 0, tuple(idx))


def _cols(param: str, idx: list[int]) -> ParamSlice:
    return ParamSlice(param, 1, tuple(idx))


def _qk_slices(p: str, rows: list[int]) -> list[ParamSlice]:
    return [_rows(f"{p}.q_proj.weight", rows), _rows(f"{p}.q_proj.bias", rows), _rows(f"{p}.k_proj.weight", rows)]


def _vo_slices(p: str, rows: list[int]) -> list[ParamSlice]:
    return [_rows(f"{p}.v_proj.weight", rows), _rows(f"{p}.v_proj.bias", rows), _cols(f"{p}.out_proj.weight", rows)]


def _attn_groups(model, side, layer, comp, space) -> list[Group]:
    attn = getattr(layers_of(model, side)[layer], ATTN_ATTR[comp])
    heads, qk, vo = attn_dims(attn)
    p = f"{prefix(side, layer)}.{ATTN_ATTR[comp]}"
    base = f"{side}.{layer}.{comp}"
    out = []

    def add(kind, head, index, name, slices):
        out.append(Group(name, side, layer, comp, kind, head, index, tuple(slices)))

    if "head" in space.kinds:
        for h in range(heads):
            qrows, vrows = list(range(h * qk, (h + 1) * qk)), list(range(h * vo, (h + 1) * vo))
            add("head", h, h, f"{base}.head.{h}", _qk_slices(p, qrows) + _vo_slices(p, vrows))
    for kind, width, slicer in (("qk", qk, _qk_slices), ("vo", vo, _vo_slices)):
        if kind not in space.kinds:
            continue
        for c in range(width):
            if space.channel_pattern == "shared":
                add(kind, None, c, f"{base}.{kind}.{c}", slicer(p, [h * width + c for h in range(heads)]))
            else:
                for h in range(heads):
                    add(kind, h, c, f"{base}.{kind}.h{h}.{c}", slicer(p, [h * width + c]))
    return out


def _ffn_groups(model, side, layer) -> list[Group]:
    n = layers_of(model, side)[layer].fc1.out_features
    p = prefix(side, layer)
    return [
        Group(
            f"{side}.{layer}.ffn.neuron.{i}",
            side,
            layer,
            "ffn",
            "neuron",
            None,
            i,
            (_rows(f"{p}.fc1.weight", [i]), _rows(f"{p}.fc1.bias", [i]), _cols(f"{p}.fc2.weight", [i])),
        )
        for i in range(n)
    ]


def _layer_group(model, side, layer) -> Group:
    p = prefix(side, layer)
    module = layers_of(model, side)[layer]
    slices = tuple(_rows(f"{p}.{n}", list(range(t.shape[0]))) for n, t in module.named_parameters())
    return Group(f"{side}.{layer}.layer", side, layer, "layer", "layer", None, layer, slices)


def _numel(group: Group, shapes: dict[str, torch.Size]) -> int:
    total = 0
    for s in group.slices:
        shape = list(shapes[s.param])
        shape[s.dim] = len(s.index)
        total += math.prod(shape)
    return total


def enumerate_groups(model: nn.Module, space: GroupSpace) -> list[Group]:
    """Every group of ``space`` in ``model`` (current positions), in a fixed, deterministic order."""
    groups: list[Group] = []
    for side in SIDES:
        for layer in range(len(layers_of(model, side))):
            for comp in ("self_attn", "cross_attn") if side == "decoder" else ("self_attn",):
                if space.wants(side, comp) and space.kinds & set(KINDS_OF[comp]):
                    groups += _attn_groups(model, side, layer, comp, space)
            if space.wants(side, "ffn") and "neuron" in space.kinds:
                groups += _ffn_groups(model, side, layer)
            if space.wants(side, "layer") and "layer" in space.kinds:
                groups.append(_layer_group(model, side, layer))
    shapes = {n: p.shape for n, p in model.named_parameters(remove_duplicate=False)}
    return [replace(g, numel=_numel(g, shapes)) for g in groups]


# ---- names ----------------------------------------------------------------------------------------

_NAME = re.compile(
    r"^(?P<side>encoder|decoder)\.(?P<layer>\d+)\."
    r"(?:(?P<layerkind>layer)"
    r"|(?P<comp>self_attn|cross_attn)\.(?:head\.(?P<head>\d+)|(?P<ch>qk|vo)\.(?:h(?P<chead>\d+)\.)?(?P<c>\d+))"
    r"|ffn\.neuron\.(?P<neuron>\d+))$"
)


@dataclass(frozen=True)
class GroupKey:
    """A parsed group name (no model needed)."""

    side: str
    layer: int
    component: str
    kind: str
    head: int | None  # per-head channel's head, or the head of a head group
    index: int

    @property
    def block(self) -> str:
        return f"{self.side}.{self.layer}.{self.component}"


def parse_name(name: str) -> GroupKey | None:
    """Parse ``encoder.3.self_attn.head.5`` etc.; None if it is not a group name at all."""
    m = _NAME.match(name)
    if m is None:
        return None
    side, layer = m["side"], int(m["layer"])
    if m["layerkind"]:
        return GroupKey(side, layer, "layer", "layer", None, layer)
    if m["neuron"] is not None:
        return GroupKey(side, layer, "ffn", "neuron", None, int(m["neuron"]))
    if m["head"] is not None:
        return GroupKey(side, layer, m["comp"], "head", int(m["head"]), int(m["head"]))
    head = int(m["chead"]) if m["chead"] is not None else None
    return GroupKey(side, layer, m["comp"], m["ch"], head, int(m["c"]))


def name_problem(model: nn.Module, name: str) -> str | None:
    """Why ``name`` is not a group of ``model`` (None if it is)."""
    key = parse_name(name)
    if key is None:
        return f"{name!r} is not a group name"
    n_layers = len(layers_of(model, key.side))
    if key.layer >= n_layers:
        return f"{name!r}: {key.side} has layers 0..{n_layers - 1}"
    if key.side == "encoder" and key.component == "cross_attn":
        return f"{name!r}: encoder layers have no cross_attn"
    module = layers_of(model, key.side)[key.layer]
    if key.component in ATTN_COMPONENTS:
        heads, qk, vo = attn_dims(getattr(module, ATTN_ATTR[key.component]))
        width = {"head": heads, "qk": qk, "vo": vo}[key.kind]
        if key.head is not None and key.head >= heads:
            return f"{name!r}: {key.block} has heads 0..{heads - 1}"
        if key.index >= width:
            return f"{name!r}: {key.block} has {key.kind} 0..{width - 1}"
    if key.component == "ffn" and key.index >= module.fc1.out_features:
        return f"{name!r}: {key.block} has neurons 0..{module.fc1.out_features - 1}"
    return None


def _span(n: int) -> str:
    return f"{{0..{n - 1}}}"


def valid_names(model: nn.Module) -> list[str]:
    """Name patterns with the ranges valid for ``model`` — for error messages."""
    out = []
    for side in SIDES:
        for layer, module in enumerate(layers_of(model, side)):
            for comp in ("self_attn", "cross_attn") if side == "decoder" else ("self_attn",):
                heads, qk, vo = attn_dims(getattr(module, ATTN_ATTR[comp]))
                b = f"{side}.{layer}.{comp}"
                out.append(f"{b}.head.{_span(heads)}")
                out.append(f"{b}.qk.{_span(qk)} | {b}.qk.h{_span(heads)}.{_span(qk)}")
                out.append(f"{b}.vo.{_span(vo)} | {b}.vo.h{_span(heads)}.{_span(vo)}")
            out.append(f"{side}.{layer}.ffn.neuron.{_span(module.fc1.out_features)}")
            out.append(f"{side}.{layer}.layer")
    return out


# ---- masking (for scores and equivalence tests) ----------------------------------------------------


@torch.no_grad()
def zero_groups(model: nn.Module, groups: list[Group]) -> None:
    """Set every weight of ``groups`` to zero in place (a mask, NOT pruning; shapes unchanged).

    Zeroing a group is output-equivalent to removing it (tests prove it). For a layer group every
    parameter is zeroed, so both residual branches add exactly 0, as if the layer were gone.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    for group in groups:
        for s in group.slices:
            index = torch.tensor(s.index, dtype=torch.long, device=params[s.param].device)
            params[s.param].index_fill_(s.dim, index, 0.0)
