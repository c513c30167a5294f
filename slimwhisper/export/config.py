"""``ExportConfig``: the one frozen config of the export stage, saved in every bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimwhisper.errors import UserError

QUANTIZE_CHOICES = (None, "int8")
EMBEDDING_BITS = (8, 4)
ENCODER_INT8 = ("blocks", "smoothed")  # handlers: export/quantize.py ENCODER_SCHEMES


class ExportError(UserError, RuntimeError):
    """The export cannot proceed; the message says what to do."""


class ExportConfigError(UserError, ValueError):
    """An ``ExportConfig`` is invalid; ``problems`` lists every issue."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid export config", self.problems)


@dataclass(frozen=True)
class ParityTolerance:
    """Largest allowed max-abs differences between ONNX (fp32) and PyTorch outputs."""

    encoder: float = 1e-3  # hidden states and cross K/V, per element, times max(1, max|torch output|)
    logits: float = 1e-3  # decoder logits, per step
    tokens_must_match: bool = True  # greedy tokens identical (fp32 only; int8/fp16 are reported)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 20
    quantize: str | None = None  # None (fp32) or "int8" (dynamic, per-channel weights)
    fp16: bool = False  # also write an fp16 copy for GPU providers
    keep_fp32: bool = False  # with quantize: keep the fp32 graphs in the bundle too (variant "fp32")
    ort: bool = False  # also write .ort files + required-operators config for ORT Mobile builds
    parity: ParityTolerance = field(default_factory=ParityTolerance)
    parity_clips: int = 2  # real clips decoded greedily in the parity check
    parity_max_tokens: int = 64
    threads: int = 2  # intra-op threads used for parity/benchmark sessions
    # int8 encoder (MatMulNBits, 8-bit weights in blocks of 128): True = accuracy_level 4, activations
    # quantised to int8 per row and block at run time (the VNNI / ARM dot-product int8 kernels);
    # False = accuracy_level 1, fp32 activations and weights dequantised inside the kernel. base's
    # encoder has outlier activation channels: relative output error 4.5% (level 4) vs 1.7% (level 1)
    # on 3 ljspeech/dev clips; its speed was only compared on a busy machine (not slower there).
    int8_encoder_activations: bool = True
    # int8 bundles: bits of the tied token table (embedding + output projection, 53% of tiny.en's
    # weights). 4 = symmetric 4-bit weights in blocks of EMBEDDING_BLOCK_4BIT along d, one fp16
    # scale per block (issue 12: the table shrinks from 20.2 to ~10.6 MB in tiny.en).
    embedding_bits: int = 8
    # int8 encoder scheme. "blocks": MatMulNBits as above, data-free. "smoothed" (export/smooth.py):
    # outlier channels divided down on ``calib`` audio, then per-tensor dynamic int8 (MatMulInteger),
    # the faster kernel; needs ``calib`` (training audio, never an evaluation set).
    # encoder self-attention as onnxruntime's MultiHeadAttention (export/fuse.py): no (heads, 1500,
    # 1500) fp32 score tensors, so a lower peak RSS; False keeps the eager MatMul/Softmax subgraph
    # (for onnxruntime builds without the com.microsoft operators).
    fuse_attention: bool = True
    # int8 encoder: positions as Range/Sin/Cos ops instead of a stored (1500, d) table when the table
    # is Whisper's fixed sinusoids (export/positions.py): 1.15 MB less in tiny.en's int8 bundle.
    generated_positions: bool = True
    encoder_int8: str = "blocks"
    calib: tuple[str, ...] = ()
    calib_n: int = 16  # calibration clips (30 s windows) for "smoothed"

    def __post_init__(self) -> None:
        if isinstance(self.parity, dict):  # from JSON
            object.__setattr__(self, "parity", ParityTolerance(**self.parity))
        if isinstance(self.calib, list):
            object.__setattr__(self, "calib", tuple(self.calib))
        problems = self._encoder_problems()
        if self.quantize not in QUANTIZE_CHOICES:
            problems.append(f"quantize must be one of {QUANTIZE_CHOICES}, got {self.quantize!r}")
        if not isinstance(self.opset, int) or not 17 <= self.opset <= 21:
            problems.append(f"opset must be an int in 17..21 (tested: 20), got {self.opset!r}")
        if self.embedding_bits not in EMBEDDING_BITS or isinstance(self.embedding_bits, bool):
            problems.append(f"embedding_bits must be one of {EMBEDDING_BITS}, got {self.embedding_bits!r}")
        elif self.embedding_bits != 8 and self.quantize != "int8":
            problems.append("embedding_bits applies to int8 bundles only: add --quantize int8")
        for name in ("fuse_attention", "generated_positions"):
            if getattr(self, name) not in (True, False):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.int8_encoder_activations not in (True, False):
            problems.append(f"int8_encoder_activations must be true or false, got {self.int8_encoder_activations!r}")
        for name in ("parity_clips", "parity_max_tokens", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        for name in ("encoder", "logits"):
            value = getattr(self.parity, name)
            if not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"parity.{name} tolerance must be > 0, got {value!r}")
        if problems:
            raise ExportConfigError(problems)

    def _encoder_problems(self) -> list[str]:
        problems = []
        if self.encoder_int8 not in ENCODER_INT8:
            problems.append(f"encoder_int8 must be one of {ENCODER_INT8}, got {self.encoder_int8!r}")
        elif self.encoder_int8 == "smoothed":
            if self.quantize != "int8":
                problems.append("encoder_int8 'smoothed' applies to int8 bundles only: add --quantize int8")
            if not self.calib:
                problems.append("encoder_int8 'smoothed' needs calibration audio: add --calib TRAINING_DATA "
                                "(e.g. ljspeech/train.tsv), or use --encoder-int8 blocks")
            if isinstance(self.calib_n, bool) or not isinstance(self.calib_n, int) or self.calib_n < 1:
                problems.append(f"calib_n must be a positive int, got {self.calib_n!r}")
        if self.calib:
            from slimwhisper.data import evaluation_problems

            problems += [f"calibration data {p} does not exist" for p in self.calib if not Path(p).exists()]
            problems += evaluation_problems(self.calib, use="calibrate")
            if self.encoder_int8 != "smoothed":
                problems.append("calib is used by encoder_int8 'smoothed' only: add --encoder-int8 smoothed or drop --calib")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        return cls(**data)
