"""End to end: bench a tiny random model saved as a transformers folder; report files, skips, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from slimwhisper.models.testing import tiny_random_loaded

    import torch

    loaded = tiny_random_loaded(seed=0)
    # Make the random decoder say end-of-text almost at once (its hidden state is a scaled copy
    # of the EOT embedding), so tests do not spend seconds decoding 224 random tokens per clip.
    model, eot = loaded.model, loaded.model.generation_config.eos_token_id
    eot = eot[0] if isinstance(eot, list) else eot
    with torch.no_grad():
        emb = model.model.decoder.embed_tokens.weight
        direction = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
        emb[eot] = 20 * direction / direction.norm()  # (the EOT row is the all-zero padding row)
        norm = model.model.decoder.layer_norm
        norm.weight.zero_()
        norm.bias.copy_(emb[eot])
    folder = tmp_path_factory.mktemp("tiny-model")
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("tiny-data")
    (folder / "audio").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(("hello world", "the quick brown fox")):
        sf.write(folder / "audio" / f"c{i}.wav", (0.05 * rng.standard_normal(8000 + 4000 * i)).astype(np.float32), 16000)
        lines.append(f"c{i}\taudio/c{i}.wav\t{text}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _bench(tiny_folder, tiny_data, out, **kw):
    from slimwhisper.bench.config import BenchConfig
    from slimwhisper.bench.suite import run_bench

    cfg = dict(targets=(str(tiny_folder),), data=str(tiny_data), out=str(out), threads=1, repeat=2, memory=False)
    cfg.update(kw)
    return run_bench(BenchConfig(**cfg), progress=False, say=lambda m: None, argv=["slimwhisper", "bench", "test"])


def test_report_files_and_unavailable_entries(tiny_folder, tiny_data, tmp_path):
    out = tmp_path / "report"
    report = _bench(tiny_folder, tiny_data, out, backends=("torch", "torch-cuda", "faster-whisper-int8"))
    for name in ("report.json", "report.md", "transcripts.jsonl", "bench_config.json",
                 "wer_vs_latency.png", "wer_vs_params.png", "params_by_component.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    assert set(data) >= {"machine", "config", "dataset", "entries", "notes", "plots"}
    assert data["machine"]["threads"] == 1 and data["machine"]["command"] == "slimwhisper bench test"
    assert data["dataset"]["clips"] == 2
    by_backend = {e["backend"]: e for e in data["entries"]}
    torch_entry = by_backend["torch"]
    assert torch_entry["status"] == "ok"
    assert torch_entry["static"]["params"] == torch_entry["static"]["params_measured"]
    assert torch_entry["static"]["file_bytes"] > 0
    for key in ("encoder_ms_per_window", "decoder_ms_per_token", "seconds_per_clip", "rtf"):
        t = torch_entry["timing"][key]
        assert t["n"] == 2 and t["min"] <= t["median"] <= t["max"]
    acc = torch_entry["accuracy"]
    assert acc["words"] == 6 and acc["wer"] > 0.5  # a random model is wrong, and the scorer says so
    # the first entry is its own reference: agreement is perfect (or undefined if it said nothing)
    assert acc.get("agreement_wer", 0.0) == 0.0 and acc["same_text"] == 1.0
    # a random folder has no CTranslate2 weights and this machine has no GPU (skip if it does)
    assert by_backend["faster-whisper-int8"]["status"] == "not available"
    assert "CTranslate2" in by_backend["faster-whisper-int8"]["reason"]
    if by_backend["torch-cuda"]["status"] != "ok":
        assert by_backend["torch-cuda"]["reason"].startswith("not available")
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header + one row per entry
    assert "not available" in md and "(1.00×)" not in table[1]
    rows = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["c0", "c1"] and all(torch_entry["id"] in r for r in rows)
    assert report["entries"][0]["id"] == torch_entry["id"]


def test_two_entries_ratios_and_force(tiny_folder, tiny_data, tmp_path):
    from slimwhisper.bench.config import BenchError
    from slimwhisper.bench.report import markdown

    out = tmp_path / "r"
    _bench(tiny_folder, tiny_data, out, repeat=1, timing_limit=1)  # a previous report
    with pytest.raises(BenchError, match="--force"):
        _bench(tiny_folder, tiny_data, out)
    (out / "keep.txt").write_text("old")  # inside a previous report: --force may replace it
    report = _bench(tiny_folder, tiny_data, out, targets=(str(tiny_folder), str(tiny_folder)),
                    labels=("dense", "copy"), force=True, repeat=1, timing_limit=1)
    assert not (out / "keep.txt").exists()
    assert [e["id"] for e in report["entries"]] == ["dense [torch]", "copy [torch]"]
    assert report["dataset"]["timing_clips"] == 1
    md = markdown(report)
    assert "(1.00×)" in md  # same weights: params ratio 1.00
    assert report["entries"][1]["accuracy"]["same_text"] == 1.0


def test_memory_of_fresh_child(tiny_folder, tmp_path):
    from slimwhisper.bench.memory import measure_fresh

    audio = tmp_path / "a.npy"
    np.save(audio, np.zeros(16000, dtype=np.float32))
    mem = measure_fresh("torch", str(tiny_folder), audio, threads=1)
    assert mem["peak_rss_mb"] >= mem["loaded_rss_mb"] >= mem["imports_rss_mb"] > mem["python_rss_mb"] > 0
    assert mem["load_s"] > 0
    assert mem["vm_hwm_mb"] <= mem["peak_rss_mb"] + 1  # own-mm peak never exceeds wait4's figure


def test_memory_child_failure_is_reported(tmp_path):
    from slimwhisper.bench.memory import measure_fresh

    audio = tmp_path / "a.npy"
    np.save(audio, np.zeros(1600, dtype=np.float32))
    with pytest.raises(RuntimeError, match="memory child"):
        measure_fresh("onnx", str(tmp_path / "no" / "bundle"), audio, threads=1)


# ---- CLI -------------------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from slimwhisper.cli import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


def test_cli_bad_inputs_exit_2(tiny_folder, tiny_data, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "notes.txt").write_text("user data")
    r = _cli("bench", str(tiny_folder), "--data", str(tiny_data), "--out", str(existing))
    assert r.exit_code == 2 and "--force" in r.output
    r = _cli("bench", str(tiny_folder), "--data", str(tiny_data), "--out", str(existing), "--force")
    assert r.exit_code == 2 and "not a benchmark report" in r.output  # never a folder it did not make
    r = _cli("bench", str(tiny_folder), "--data", str(tiny_data), "--out", str(tiny_folder / "report"), "--force")
    assert r.exit_code == 2 and "input" in r.output  # never inside the model it reads
    assert (existing / "notes.txt").read_text() == "user data"
    r = _cli("bench", str(tmp_path / "no" / "bundle"), "--data", str(tiny_data), "--out", str(tmp_path / "o1"))
    assert r.exit_code == 2 and "does not exist" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "transcripts.tsv").write_text("")
    r = _cli("bench", str(tiny_folder), "--data", str(empty), "--out", str(tmp_path / "o2"))
    assert r.exit_code == 2 and "error:" in r.output
    r = _cli("bench", str(tiny_folder), "--data", str(tiny_data), "--out", str(tmp_path / "o3"), "--backend", "onnx")
    assert r.exit_code == 2 and "no chosen backend" in r.output
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_cli_bench_runs(tiny_folder, tiny_data, tmp_path):
    out = tmp_path / "cli"
    r = _cli("bench", str(tiny_folder), "--data", str(tiny_data), "--out", str(out), "--threads", "1",
             "--repeat", "1", "--no-memory", "--quiet", "--backend", "torch", "--backend", "torch-cuda")
    assert r.exit_code == 0, r.output
    assert "| entry |" in r.output and (out / "report.md").is_file()


# ---- bundles ---------------------------------------------------------------------------------
def test_bench_bundle_onnx_and_cuda_not_available(tiny_bundle, tiny_data, tmp_path):
    import onnxruntime as ort

    from slimwhisper.bench.config import BenchConfig
    from slimwhisper.bench.suite import run_bench

    loaded, bundle = tiny_bundle
    cfg = BenchConfig(targets=(str(bundle),), data=str(tiny_data), out=str(tmp_path / "b"), threads=1, repeat=1,
                      memory=False, backends=("onnx", "onnx-cuda", "torch"))
    report = run_bench(cfg, progress=False, say=lambda m: None)
    by = {e["backend"]: e for e in report["entries"]}
    assert by["onnx"]["status"] == "ok"
    assert by["onnx"]["info"]["providers"] == ["CPUExecutionProvider"]
    assert by["onnx"]["static"]["params"] == loaded.spec.params()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert by["onnx"]["static"]["file_bytes"] == sum((bundle / f).stat().st_size for f in manifest["files"]) + (
        bundle / "manifest.json").stat().st_size
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert by["onnx-cuda"]["status"] == "not available"
        assert "onnx-cuda" not in json.dumps(by["onnx"]["timing"])  # no CPU figure under a CUDA label
        assert by["onnx-cuda"]["timing"] == {} and by["onnx-cuda"]["accuracy"] == {}
    assert report["skipped"][0]["backend"] == "torch" and "not applicable" in report["skipped"][0]["reason"]


def test_cuda_label_refused_when_sessions_run_on_cpu(tiny_bundle, monkeypatch):
    import slimwhisper.runtime as runtime
    from slimwhisper.bench import backends
    from slimwhisper.bench.targets import resolve_target

    class FakeSession:
        def get_providers(self):
            return ["CPUExecutionProvider", "CUDAExecutionProvider"]  # CUDA listed, CPU actually first

    class FakeTranscriber:
        def __init__(self, *args, **kwargs):
            self.variant = "fp32"

    monkeypatch.setattr(runtime, "BundleTranscriber", FakeTranscriber)
    monkeypatch.setattr(backends, "_sessions", lambda tr: [FakeSession()])
    with pytest.raises(backends.BackendUnavailable, match="not CUDAExecutionProvider"):
        backends.get_backend("onnx-cuda").open(resolve_target(str(tiny_bundle[1])), 1)


def test_bundle_memory_child_never_imports_torch(tiny_bundle, tmp_path):
    from slimwhisper.bench.memory import measure_fresh

    audio = tmp_path / "a.npy"
    np.save(audio, np.zeros(8000, dtype=np.float32))
    mem = measure_fresh("onnx", str(tiny_bundle[1]), audio, threads=1)
    assert mem["torch_imported"] is False
    assert mem["peak_rss_mb"] >= mem["imports_rss_mb"] > 0


# ---- FLOPs: second independent count on the exported ONNX graphs ------------------------------
def _check_bundle_flops(bundle, spec, context):
    from slimwhisper.bench.flops_check import bundle_flops

    walked = bundle_flops(bundle, context)
    f = spec.flops(tokens=1, context=context)
    # the bundle's encoder graph also projects the cross-attention K/V once per window
    assert abs(walked["encoder_graph"] - (f["encoder"] + f["cross_kv"])) <= 0.01 * walked["encoder_graph"]
    assert abs(walked["decoder_graph"] - f["decoder_token"]) <= 0.01 * walked["decoder_graph"]


def test_flops_match_onnx_graph_walk_dense(tiny_bundle):
    loaded, bundle = tiny_bundle
    _check_bundle_flops(bundle, loaded.spec, context=8)


@pytest.mark.slow
def test_flops_match_onnx_graph_walk_uneven(tmp_path):
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models.slim import model_from_spec
    from slimwhisper.models.testing import tiny_random_loaded
    from slimwhisper.spec import ArchSpec, AttnSpec, LayerSpec

    loaded = tiny_random_loaded()
    d, cfg = 64, loaded.model.config
    spec = ArchSpec(d, cfg.num_mel_bins, cfg.vocab_size, cfg.max_source_positions, cfg.max_target_positions,
                    encoder=(LayerSpec(AttnSpec(3, 12, 20, 16), 80, 1),),
                    decoder=(LayerSpec(AttnSpec(2, 16, 10, 16), 48, 0, cross_attn=AttnSpec(1, 8, 16, 16)),
                             LayerSpec(AttnSpec(4, 16, 16, 16), 128, 1, cross_attn=AttnSpec(3, 16, 8, 16))))
    model = model_from_spec(cfg, spec)
    model.generation_config = loaded.model.generation_config
    loaded.model, loaded.spec = model.eval(), spec
    export_bundle(loaded, tmp_path / "b", ExportConfig(parity_clips=1, parity_max_tokens=4, threads=1), log=lambda m: None)
    _check_bundle_flops(tmp_path / "b", spec, context=8)
