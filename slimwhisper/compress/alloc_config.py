"""The allocation stage's typed config: per-kind and per-component ratios, layer drops, budgets.

``allocate.py`` turns scores into a plan with it; kept apart so that the CLI and recipes build and
check a config without the allocation code. Selectors name blocks: ``SIDE[LAYERS].COMPONENT[.KIND]``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum

from slimwhisper.compress.groups import GroupSpace
from slimwhisper.compress.sensconfig import SensAllocConfig
from slimwhisper.errors import UserError

RATIO_KINDS = {"heads": "head", "ffn": "neuron", "qk": "qk", "vo": "vo"}
_KIND_WORDS = {"head": "head", "heads": "head", "qk": "qk", "vo": "vo", "neuron": "neuron", "neurons": "neuron"}
_SELECTOR = re.compile(
    r"^(?P<side>encoder|decoder)(?:\[(?P<a>-?\d*)(?P<colon>:)?(?P<b>-?\d*)\])?"
    r"\.(?P<comp>self_attn|cross_attn|ffn)(?:\.(?P<kind>heads?|qk|vo|neurons?))?$"
)


class AllocError(UserError, ValueError):
    """Bad allocation options; the message lists every problem and what is valid."""


class Threshold(str, Enum):
    GLOBAL = "global"
    LOCAL = "local"
    SENSITIVITY = "sensitivity"  # budget spread by measured loss curves (``sensalloc.py``)


@dataclass(frozen=True)
class Selector:
    side: str
    start: int | None
    stop: int | None
    single: bool  # "[i]" rather than a slice
    component: str
    kind: str

    @classmethod
    def parse(cls, text: str) -> Selector:
        m = _SELECTOR.match(text.strip())
        if m is None:
            raise AllocError(
                f"bad component selector {text!r}; use SIDE[.LAYERS].COMPONENT[.KIND], e.g. decoder.self_attn, "
                "encoder[-4:].self_attn, decoder[0].ffn, encoder.self_attn.qk (SIDE encoder|decoder, "
                "COMPONENT self_attn|cross_attn|ffn, KIND heads|qk|vo|neurons)"
            )
        comp = m["comp"]
        kind = _KIND_WORDS[m["kind"]] if m["kind"] else ("neuron" if comp == "ffn" else "head")
        problems = []
        if m["side"] == "encoder" and comp == "cross_attn":
            problems.append(f"{text!r}: encoder layers have no cross_attn")
        if (comp == "ffn") != (kind == "neuron"):
            problems.append(f"{text!r}: {comp} has no {kind} groups")
        if problems:
            raise AllocError("; ".join(problems))
        single = m["a"] is not None and m["colon"] is None
        if single and m["a"] == "":
            raise AllocError(f"{text!r}: empty layer index")
        start = int(m["a"]) if m["a"] not in (None, "") else None
        stop = int(m["b"]) if m["b"] not in (None, "") else None
        return cls(m["side"], start, stop, single, comp, kind)

    def layers(self, n: int) -> list[int]:
        if self.single:
            i = self.start if self.start >= 0 else n + self.start
            return [i] if 0 <= i < n else []
        return list(range(n))[slice(self.start, self.stop)]


@dataclass(frozen=True)
class AllocConfig:
    threshold: Threshold = Threshold.LOCAL
    heads: float = 0.0
    ffn: float = 0.0
    qk: float = 0.0
    vo: float = 0.0
    components: tuple[tuple[str, float], ...] = ()  # (selector, ratio); "sel=ratio" strings accepted
    drop_encoder_layers: int = 0
    drop_decoder_layers: int = 0
    target_params: float | None = None
    target_flops: float | None = None
    budget_kinds: tuple[str, ...] = ("head", "neuron")
    channel_pattern: str = "shared"
    sensitivity: SensAllocConfig = dataclasses.field(default_factory=SensAllocConfig)  # threshold "sensitivity" only

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "threshold", Threshold(self.threshold))
        except ValueError:
            problems.append(f"threshold must be 'global', 'local' or 'sensitivity', got {self.threshold!r}")
        if self.threshold == Threshold.SENSITIVITY:
            problems += self._sensitivity_problems()
        comps = []
        for item in self.components:
            if isinstance(item, str):
                sel, _, value = item.partition("=")
                try:
                    item = (sel.strip(), float(value))
                except ValueError:
                    problems.append(f"component ratio {item!r}: expected SELECTOR=RATIO, e.g. decoder.self_attn=0.5")
                    continue
            comps.append((str(item[0]), item[1]))
        object.__setattr__(self, "components", tuple(comps))
        object.__setattr__(self, "budget_kinds", tuple(self.budget_kinds))
        for name in RATIO_KINDS:
            problems += _ratio_problem(f"--{name}", getattr(self, name))
        for sel, ratio in self.components:
            problems += _ratio_problem(f"component {sel}", ratio)
            try:
                Selector.parse(sel)
            except AllocError as exc:
                problems.append(str(exc))
        for name in ("target_params", "target_flops"):
            if getattr(self, name) is not None:
                problems += _ratio_problem(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.target_params is not None and self.target_flops is not None:
            problems.append("give --target-params or --target-flops, not both")
        for name in ("drop_encoder_layers", "drop_decoder_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problems.append(f"{name} must be an int >= 0, got {v!r}")
        bad_kinds = [k for k in self.budget_kinds if k not in ("head", "neuron", "qk", "vo")]
        if bad_kinds or not self.budget_kinds:
            problems.append(f"budget_kinds must be a non-empty subset of head, neuron, qk, vo; got {self.budget_kinds}")
        if self.channel_pattern not in ("shared", "per_head"):
            problems.append(f"channel_pattern must be 'shared' or 'per_head', got {self.channel_pattern!r}")
        if problems:
            raise AllocError("invalid allocation", problems)

    def _sensitivity_problems(self) -> list[str]:
        out = []
        if not isinstance(self.sensitivity, SensAllocConfig):
            out.append("sensitivity must be a SensAllocConfig")
        if self.target_params is None and self.target_flops is None:
            out.append("threshold 'sensitivity' spreads a budget: give --target-params or --target-flops")
        fixed = [f"--{n}" for n in RATIO_KINDS if getattr(self, n)] + [f"component {s}" for s, _ in self.components]
        fixed += [n for n in ("drop_encoder_layers", "drop_decoder_layers") if getattr(self, n)]
        if fixed:
            out.append(f"threshold 'sensitivity' chooses every ratio itself; drop {', '.join(fixed)}")
        if "qk" in self.budget_kinds:
            out.append("threshold 'sensitivity' allocates heads, vo channels and FFN neurons, not qk channels")
        return out

    @property
    def has_budget(self) -> bool:
        return self.target_params is not None or self.target_flops is not None

    def kinds(self) -> frozenset[str]:
        """The group kinds this allocation needs scored."""
        out = {RATIO_KINDS[n] for n in RATIO_KINDS if getattr(self, n) > 0}
        out |= {Selector.parse(s).kind for s, r in self.components if r > 0}
        if self.has_budget:
            out |= set(self.budget_kinds)
        if self.drop_encoder_layers or self.drop_decoder_layers:
            out.add("layer")
        return frozenset(out)

    def group_space(self) -> GroupSpace:
        kinds = self.kinds()
        if not kinds:
            raise AllocError("nothing to prune: give a ratio (--heads/--ffn/--qk/--vo), a component ratio, "
                             "layers to drop, a budget (--target-params) or a --plan file")  # fmt: skip
        return GroupSpace(kinds, self.channel_pattern)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["threshold"] = self.threshold.value
        d["components"] = [f"{s}={r}" for s, r in self.components]
        d["sensitivity"] = self.sensitivity.to_dict() if self.threshold == Threshold.SENSITIVITY else None
        return d


def _ratio_problem(name: str, value) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
        return [f"{name} must be a ratio in [0, 1), got {value!r} (1 would empty a block; drop layers instead)"]
    return []
