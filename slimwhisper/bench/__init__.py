"""Honest benchmarks: size, FLOPs, accuracy, latency and memory of models and bundles.

    from slimwhisper.bench.config import BenchConfig
    from slimwhisper.bench.suite import run_bench
    report = run_bench(BenchConfig(targets=("base", "out/bundle@int8"), data="../shared/data/ljspeech/dev.tsv",
                                   out="report", backends=("torch", "onnx", "faster-whisper-int8")))

Backends are registered by name in ``slimwhisper.bench.backends`` (``register_backend``);
static metrics in ``static``; the FLOP cross-checks in ``flops_check``; the prune -> export ->
bench job in ``pipeline``. Heavy libraries are imported inside functions only.
"""

from slimwhisper.bench import whispercpp  # noqa: F401 - registers the whisper-cpp peer backend
