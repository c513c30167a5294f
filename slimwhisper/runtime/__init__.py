"""Torch-free runtime: numpy + onnxruntime + stdlib only (this package is what ships to devices).

    from slimwhisper.runtime import BundleTranscriber
    t = BundleTranscriber("bundle_dir", threads=2)
    print(t.transcribe(audio_16k_float32).text)
"""

from slimwhisper.runtime.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleTranscriber,
    Transcript,
    read_manifest,
    sha256_file,
)
from slimwhisper.runtime.decode import CacheLayout, DecodeOptions, GreedyDecoder
from slimwhisper.runtime.frontend import AudioError, log_mel, resample
from slimwhisper.runtime.tokenizer import TokenDecoder

__all__ = [
    "FORMAT_VERSION",
    "AudioError",
    "BundleError",
    "BundleTranscriber",
    "CacheLayout",
    "DecodeOptions",
    "GreedyDecoder",
    "TokenDecoder",
    "Transcript",
    "log_mel",
    "read_manifest",
    "resample",
    "sha256_file",
]
