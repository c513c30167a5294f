"""Torch-free runtime: numpy + onnxruntime + stdlib only (this package is what ships to devices).

    from slimwhisper.runtime import BundleTranscriber, DecodeOptions, DecodingOptions
    t = BundleTranscriber("bundle_dir", threads=2,
                          options=DecodeOptions(decoding=DecodingOptions(beam_size=5, timestamps=True)))
    r = t.transcribe(audio_16k_float32)
    print(r.text, [(s.start, s.end, s.text) for s in r.segments])
"""

from slimwhisper.runtime.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleTranscriber,
    Transcript,
    read_manifest,
    sha256_file,
    specials_from_manifest,
)
from slimwhisper.runtime.decode import (
    CacheLayout,
    DecodeOptions,
    DecodeOptionsError,
    OnnxWhisper,
    forced_language,
)
from slimwhisper.runtime.engine import (
    DecodingError,
    DecodingOptions,
    Specials,
    WindowResult,
    decode_with_fallback,
)
from slimwhisper.runtime.frontend import AudioError, log_mel, resample
from slimwhisper.runtime.longform import (
    ArraySource,
    Segment,
    transcribe_batch,
    transcribe_long,
)
from slimwhisper.runtime.subtitles import FORMATS, FormatError, render
from slimwhisper.runtime.tokenizer import TokenDecoder

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "ArraySource",
    "AudioError",
    "BundleError",
    "BundleTranscriber",
    "CacheLayout",
    "DecodeOptions",
    "DecodeOptionsError",
    "DecodingError",
    "DecodingOptions",
    "FormatError",
    "OnnxWhisper",
    "Segment",
    "Specials",
    "TokenDecoder",
    "Transcript",
    "WindowResult",
    "decode_with_fallback",
    "forced_language",
    "log_mel",
    "read_manifest",
    "render",
    "resample",
    "sha256_file",
    "specials_from_manifest",
    "transcribe_batch",
    "transcribe_long",
]
