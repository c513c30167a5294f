"""What to remove (``PrunePlan``) and what was kept (``PruneRecord``).

A plan is a set of group names (see ``groups.py``) in the positions of the model it is applied to;
its file format is ``{"remove": [...]}``. The record says, for every kept layer, which heads, Q/K
channels, V/O channels and FFN neurons of the DENSE source survive, so a model pruned twice (or
reloaded) can always be traced back to the source weights (like Torch-Pruning's pruning history).
Pure data + JSON; the surgery that acts on it lives in ``surgery.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimwhisper.compress.groups import ATTN_ATTR, attn_dims, layers_of, name_problem, parse_name, valid_names
from slimwhisper.spec import ArchSpec
from slimwhisper.errors import UserError

RECORD_VERSION = 1


class PlanError(UserError, ValueError):
    """A plan cannot be applied; ``problems`` lists every reason and the message says what is valid."""

    def __init__(self, problems: list[str], hint: str = ""):
        self.hint = hint
        super().__init__("cannot apply pruning plan", problems)

    def __str__(self) -> str:
        return super().__str__() + (f"\n{self.hint}" if self.hint else "")


@dataclass(frozen=True)
class PrunePlan:
    remove: frozenset[str]

    def __post_init__(self) -> None:
        if isinstance(self.remove, str):
            raise PlanError([f"remove must be a collection of group names, got the string {self.remove!r}"])
        object.__setattr__(self, "remove", frozenset(self.remove))
        bad = sorted(str(n) for n in self.remove if not isinstance(n, str) or parse_name(n) is None)
        if bad:
            raise PlanError(
                [f"{n!r} is not a group name" for n in bad],
                "group names look like encoder.3.self_attn.head.5, encoder.2.self_attn.qk.7, "
                "encoder.2.self_attn.qk.h1.7, decoder.0.cross_attn.vo.9, decoder.0.ffn.neuron.17, encoder.5.layer",
            )

    def validate(self, model) -> None:
        """Refuse names that do not exist in ``model``, listing the valid names and ranges."""
        problems = [p for n in sorted(self.remove) if (p := name_problem(model, n)) is not None]
        if problems:
            raise PlanError(problems, "valid groups of this model:\n    " + "\n    ".join(valid_names(model)))

    def to_dict(self) -> dict[str, Any]:
        return {"remove": sorted(self.remove, key=_sort_key)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunePlan:
        if not isinstance(data, dict) or not isinstance(data.get("remove"), list):
            raise PlanError(['a plan file must be a JSON object {"remove": [group names...]}'])
        return cls(frozenset(data["remove"]))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError([f"plan is not valid JSON: {exc}"]) from exc

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        return cls.from_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def _sort_key(name: str) -> tuple:
    # natural order: encoder.10 after encoder.9
    return tuple(int(p) if p.isdigit() else p for p in name.replace(".h", ".h.").split("."))


# ---- record -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttnRecord:
    heads: tuple[int, ...]  # dense head index of each kept head
    qk: tuple[tuple[int, ...], ...]  # per kept head: dense Q/K channel indices (within the head)
    vo: tuple[tuple[int, ...], ...]  # per kept head: dense V/O channel indices

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "qk", tuple(tuple(c) for c in self.qk))
        object.__setattr__(self, "vo", tuple(tuple(c) for c in self.vo))

    def keep(self, heads: list[int], qk: list[list[int]], vo: list[list[int]]) -> AttnRecord:
        """Compose: ``heads``/``qk``/``vo`` are positions in THIS record's (current) module."""
        return AttnRecord(
            tuple(self.heads[h] for h in heads),
            tuple(tuple(self.qk[h][c] for c in cs) for h, cs in zip(heads, qk, strict=True)),
            tuple(tuple(self.vo[h][c] for c in cs) for h, cs in zip(heads, vo, strict=True)),
        )

    @classmethod
    def full(cls, heads: int, qk: int, vo: int) -> AttnRecord:
        return cls(tuple(range(heads)), (tuple(range(qk)),) * heads, (tuple(range(vo)),) * heads)


@dataclass(frozen=True)
class LayerRecord:
    source_index: int  # layer index in the dense source
    self_attn: AttnRecord
    ffn: tuple[int, ...]  # dense FFN neuron indices kept
    cross_attn: AttnRecord | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ffn", tuple(self.ffn))


@dataclass(frozen=True)
class PruneRecord:
    """Which parts of the dense source a pruned model keeps, and its resulting ``ArchSpec``."""

    encoder: tuple[LayerRecord, ...]
    decoder: tuple[LayerRecord, ...]
    spec: ArchSpec  # shapes after pruning (== spec_from_model of the pruned model)
    source_layers: dict[str, int]  # {"encoder": n, "decoder": m} of the dense source
    steps: tuple[tuple[str, ...], ...] = ()  # group names of each plan applied, in order
    version: int = field(default=RECORD_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", tuple(self.encoder))
        object.__setattr__(self, "decoder", tuple(self.decoder))
        object.__setattr__(self, "steps", tuple(tuple(s) for s in self.steps))

    @property
    def kept_layers(self) -> dict[str, list[int]]:
        return {"encoder": [r.source_index for r in self.encoder], "decoder": [r.source_index for r in self.decoder]}

    def side(self, name: str) -> tuple[LayerRecord, ...]:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        def attn(a: AttnRecord | None):
            return None if a is None else {"heads": list(a.heads), "qk": [list(c) for c in a.qk], "vo": [list(c) for c in a.vo]}

        def layer(r: LayerRecord):
            return {"source_index": r.source_index, "self_attn": attn(r.self_attn), "cross_attn": attn(r.cross_attn), "ffn": list(r.ffn)}

        return {
            "version": self.version,
            "source_layers": dict(self.source_layers),
            "kept_layers": self.kept_layers,
            "encoder": [layer(r) for r in self.encoder],
            "decoder": [layer(r) for r in self.decoder],
            "steps": [list(s) for s in self.steps],
            "spec": self.spec.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneRecord:
        def attn(d):
            return None if d is None else AttnRecord(d["heads"], d["qk"], d["vo"])

        def layer(d):
            return LayerRecord(d["source_index"], attn(d["self_attn"]), d["ffn"], attn(d.get("cross_attn")))

        try:
            if data.get("version", RECORD_VERSION) != RECORD_VERSION:
                raise PlanError([f"pruning record version {data['version']} is not supported (this reads {RECORD_VERSION})"])
            return cls(
                encoder=tuple(layer(d) for d in data["encoder"]),
                decoder=tuple(layer(d) for d in data["decoder"]),
                spec=ArchSpec.from_dict(data["spec"]),
                source_layers=dict(data["source_layers"]),
                steps=tuple(tuple(s) for s in data.get("steps", ())),
            )
        except (KeyError, TypeError) as exc:
            raise PlanError([f"malformed pruning record: {exc!r}"]) from exc

    @classmethod
    def from_json(cls, text: str) -> PruneRecord:
        return cls.from_dict(json.loads(text))


def identity_record(model) -> PruneRecord:
    """The record of an unpruned model: everything kept (positions = dense indices)."""
    from slimwhisper.models.slim import spec_from_model

    sides = {}
    for side in ("encoder", "decoder"):
        records = []
        for i, layer in enumerate(layers_of(model, side)):
            cross = AttnRecord.full(*attn_dims(layer.encoder_attn)) if side == "decoder" else None
            records.append(
                LayerRecord(
                    getattr(layer, "slim_source_index", i),
                    AttnRecord.full(*attn_dims(getattr(layer, ATTN_ATTR["self_attn"]))),
                    tuple(range(layer.fc1.out_features)),
                    cross,
                )
            )
        sides[side] = tuple(records)
    return PruneRecord(
        sides["encoder"],
        sides["decoder"],
        spec_from_model(model),
        {s: len(r) for s, r in sides.items()},
    )
