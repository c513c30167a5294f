"""Device profiles, the roofline estimator, calibration from real runs, the local runner and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from _helpers import assert_user_error, write_manifest
from typer.testing import CliRunner

from slimwhisper.cli import _register, app
from slimwhisper.devices.bench import DeviceBenchConfig, ram_warning
from slimwhisper.devices.calibrate import Run, compare_rows, fit, read_runs
from slimwhisper.devices.estimate import (
    decoder_workload,
    encoder_workload,
    estimate_spec,
    label_for,
    latency_model,
    phase_estimate,
    prompt_length,
)
from slimwhisper.devices.profile import PROFILES, DeviceError, get_profile, profile_from_dict
from slimwhisper.devices.targets import SpecTarget, dense_spec, spec_target
from slimwhisper.spec import AttnSpec

EXPECTED = {"rpi4", "rpi5", "rpi-zero-2w", "jetson-orin-nano", "x86-local", "cuda"}


@pytest.fixture(autouse=True)
def _private_profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMWHISPER_PROFILE_DIR", str(tmp_path / "profiles"))


def _cli(args):
    _register()
    return CliRunner().invoke(app, args)


# ---- profiles -----------------------------------------------------------------------------------
def test_builtin_profiles_have_sourced_figures_and_start_uncalibrated():
    assert EXPECTED <= set(PROFILES)
    for name in EXPECTED:
        p = get_profile(name)
        if name == "x86-local" and p.calibrated:  # fitted on real runs and committed: say on what
            assert p.calibration["phases"] and p.calibration["cpu"]
        else:
            assert p.calibrated is False and not p.calibration
        for key, fig in p.figures.items():
            assert fig.source.strip(), (name, key)
            assert fig.value is not None or fig.kind == "unknown", (name, key)  # detected ones are filled here
    assert get_profile("rpi5").value("int8_dot") is True and get_profile("rpi4").value("int8_dot") is False
    assert get_profile("rpi5").qemu_cpu == "cortex-a76" and get_profile("rpi4").qemu_cpu == "cortex-a72"


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(DeviceError, match="unknown device profile 'rpi9'") as exc:
        get_profile("rpi9")
    assert all(n in str(exc.value) for n in EXPECTED)


def test_profile_validation_reports_every_problem():
    data = get_profile("rpi5").to_dict()
    data["figures"]["cores"] = {"value": 4, "kind": "guess", "source": ""}
    del data["figures"]["ram_gb"]
    data["calibrated"] = True
    with pytest.raises(DeviceError) as exc:
        profile_from_dict(data)
    assert len(exc.value.problems) == 4


def test_detected_profile_round_trips_without_baking_in_this_machine():
    p = get_profile("x86-local")
    assert p.value("cores") >= 1 and p.value("fp32_peak_gflops") > 0
    assert p.to_dict()["figures"]["cores"]["value"] is None  # re-detected on the next load
    again = profile_from_dict(p.to_dict())
    assert again.describe == p.describe


# ---- estimator ------------------------------------------------------------------------------------
def _pruned(spec, heads=3, ffn=768):
    enc = tuple(replace(ly, self_attn=replace(ly.self_attn, heads=heads), ffn_dim=ffn) for ly in spec.encoder)
    dec = tuple(replace(ly, self_attn=replace(ly.self_attn, heads=heads), ffn_dim=ffn) for ly in spec.decoder)
    return replace(spec, encoder=enc, decoder=dec)


def test_workloads_follow_the_spec():
    tiny, base = dense_spec("tiny.en"), dense_spec("base")
    enc = encoder_workload(tiny, "fp32")
    assert enc.flops == sum(tiny.flops().get(k) for k in ("encoder", "cross_kv"))
    assert encoder_workload(base, "fp32").flops > 2 * enc.flops
    # int8 reads a quarter of the weight bytes
    weights = sum(v for k, v in tiny.params_by_component().items() if k.startswith("encoder."))
    assert math.isclose(enc.bytes - encoder_workload(tiny, "int8").bytes, 3 * (weights + 2 * 4 * 384 * 384 + 4 * 384),
                        rel_tol=1e-9)
    assert decoder_workload(tiny, "fp32", 100).bytes > decoder_workload(tiny, "fp32", 10).bytes


def test_estimates_are_labelled_and_move_the_right_way():
    rpi4, rpi5 = get_profile("rpi4"), get_profile("rpi5")
    tiny = dense_spec("tiny.en")
    e4, e5 = estimate_spec(tiny, rpi4, 10, precision="fp32"), estimate_spec(tiny, rpi5, 10, precision="fp32")
    assert e4.label == e5.label == "estimate (uncalibrated)"
    assert e5.encoder_window_s < e4.encoder_window_s  # A76 vs A72
    pruned = estimate_spec(_pruned(tiny), rpi5, 10, precision="fp32")
    assert pruned.encoder_window_s < e5.encoder_window_s and pruned.decoder_s < e5.decoder_s
    assert estimate_spec(tiny, rpi4, 10, precision="int8").encoder_window_s < e4.encoder_window_s
    one = estimate_spec(tiny, rpi5, 10, precision="fp32", threads=1)
    assert one.encoder_window_s > e5.encoder_window_s
    long = estimate_spec(tiny, rpi5, 65, precision="fp32")
    assert long.windows == 3 and long.total_s > e5.total_s
    assert e5.total_s == pytest.approx(e5.encoder_s + e5.decoder_s)


def test_estimate_rejects_bad_input():
    with pytest.raises(DeviceError) as exc:
        estimate_spec(dense_spec("tiny"), get_profile("rpi5"), -1, precision="int4", threads=0)
    assert len(exc.value.problems) == 3


def test_latency_model_is_the_estimators_total():
    model = latency_model(get_profile("rpi5"), 10.0, precision="int8")
    tiny = dense_spec("tiny.en")
    assert model(tiny) == estimate_spec(tiny, get_profile("rpi5"), 10.0, precision="int8").total_s
    assert model(_pruned(tiny)) < model(tiny)


def test_label_wording():
    assert label_for([0, 3]) == "estimate (uncalibrated)"
    assert label_for([3, 5]) == "estimate (calibrated on 3 runs)"


# ---- calibration ------------------------------------------------------------------------------------
def _run(spec, precision, enc_s, dec_s, rid="r"):
    return Run(rid, "report.json", spec, precision, 4, 32, {"encoder": enc_s, "decoder_token": dec_s}, "cpu")


def test_fit_recovers_a_known_efficiency_and_labels_the_result():
    rpi5 = get_profile("rpi5")
    tiny, base = dense_spec("tiny.en"), dense_spec("base")
    runs = []
    for i, spec in enumerate((tiny, base, _pruned(base))):  # measured = roofline / 0.2 exactly
        run = _run(spec, "int8", 0, 0, f"r{i}")
        roof_e = phase_estimate("encoder", encoder_workload(spec, "int8"), rpi5, "int8", 4).roofline_s
        roof_d = phase_estimate("decoder_token", decoder_workload(spec, "int8", prompt_length(spec) + 32), rpi5, "int8", 4).roofline_s
        runs.append(replace(run, measured={"encoder": roof_e / 0.2, "decoder_token": roof_d / 0.1}))
    fitted = fit(rpi5, runs)
    assert fitted.calibrated
    assert fitted.phase_calibration("encoder", "int8")["efficiency"] == pytest.approx(0.2)
    assert fitted.phase_calibration("decoder_token", "int8")["efficiency"] == pytest.approx(0.1)
    assert fitted.phase_calibration("encoder", "fp32") is None
    assert estimate_spec(tiny, fitted, 10, precision="int8").label == "estimate (calibrated on 3 runs)"
    assert estimate_spec(tiny, fitted, 10, precision="fp32").label == "estimate (uncalibrated)"  # not fitted
    assert all(abs(r["error"]) < 1e-9 for r in compare_rows(fitted, runs))
    with pytest.raises(DeviceError, match="no measured runs"):
        fit(rpi5, [])


def test_read_runs_skips_what_was_not_measured(tmp_path):
    report = {"machine": {"threads": 2, "cpu": "x"}, "config": {"flops_context": 32}, "entries": [
        {"id": "a", "status": "not available", "timing": {}},
        {"id": "b", "status": "ok", "kind": "model", "source": "tiny.en", "timing": {"encoder_ms_per_window": {"median": 1}}},
    ]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    runs, skipped = read_runs(tmp_path)
    assert runs == [] and len(skipped) == 2
    with pytest.raises(DeviceError, match="cannot read bench report"):
        read_runs(tmp_path / "missing.json")


# ---- RAM check, config, CLI ---------------------------------------------------------------------------
def test_bundle_too_large_for_ram_warns_with_figures():
    base = dense_spec("base")
    big = SpecTarget("b", "base-bundle@fp32", base, "fp32", "bundle", 300_000_000)
    text = ram_warning(big, get_profile("rpi-zero-2w"))
    assert text and "MB needed" in text and "0.5 GB" in text and "410 MB usable" in text
    assert ram_warning(big, get_profile("rpi5")) is None


def test_device_bench_config_reports_every_problem():
    with pytest.raises(DeviceError) as exc:
        DeviceBenchConfig(targets=(), device="rpi5", repeat=0, clip_seconds=0)
    assert len(exc.value.problems) == 6  # no target, repeat, clip, a profile without --estimate, --data, --out


def test_cli_estimate_prints_labelled_figures(tmp_path, tiny_bundle):
    _loaded, bundle = tiny_bundle
    result = _cli(["bench", str(bundle), "tiny.en@int8", "--device", "rpi5", "--estimate", "--clip-seconds", "10",
                   "--out", str(tmp_path / "est.json")])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.count("estimate (uncalibrated)") == 2 and "not measurements" in result.stdout
    assert "whisper.cpp" in result.stdout  # the published figure is shown as such, beside
    saved = json.loads((tmp_path / "est.json").read_text())
    assert saved["rows"][1]["estimate"]["windows"] == 1 and saved["rows"][1]["label"] == "estimate (uncalibrated)"


def test_cli_bad_device_inputs():
    assert_user_error(_cli(["bench", "tiny.en", "--device", "rpi9", "--estimate"]), "known profiles: cuda")
    assert_user_error(_cli(["bench", "tiny.en", "--device", "rpi5"]), "add --estimate")
    assert_user_error(_cli(["bench", "tiny.en", "--device", "ftp://x", "--data", "d", "--out", "o"]), "unknown runner")
    assert_user_error(_cli(["bench", "tiny.en", "--device", "ssh://pi@host?password=x", "--data", "d", "--out", "o"]),
                      "unknown option(s) password")
    assert_user_error(_cli(["devices", "show", "nope"]), "known profiles")


def test_local_runner_measures_then_calibrate_and_compare(tmp_path, tiny_bundle):
    """A real run on this machine through the local runner (repeat 1: a functional check, not a timing figure)."""
    _loaded, bundle = tiny_bundle
    data = write_manifest(tmp_path / "data", n=1)
    out = tmp_path / "rep"
    result = _cli(["bench", str(bundle), "--device", f"local://?root={tmp_path / 'stage'}", "--profile", "x86-local",
                   "--data", str(data), "--repeat", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["entries"][0]["device"]["runtime_from"].startswith(str(tmp_path / "stage"))
    cal = _cli(["devices", "calibrate", "x86-local", "--from", str(out / "report.json")])
    assert cal.exit_code == 0, cal.output + cal.stderr
    assert "calibrated on 1 runs" in cal.stdout
    listed = _cli(["devices", "list"])
    assert "x86-local" in listed.stdout and "calibrated (1 runs)" in listed.stdout
    est = _cli(["bench", str(bundle), "--device", "x86-local", "--estimate", "--threads", "1"])
    assert "estimate (calibrated on 1 runs)" in est.stdout
    cmp = _cli(["devices", "compare", "rpi5", "--from", str(out)])
    assert cmp.exit_code == 0 and "estimate (uncalibrated)" in cmp.stdout
    assert_user_error(_cli(["devices", "calibrate", "x86-local", "--from", str(tmp_path / "nope.json")]),
                      "cannot read bench report")


def test_spec_target_kinds(tiny_bundle, tmp_path):
    _loaded, bundle = tiny_bundle
    t = spec_target(str(bundle))
    assert t.kind == "bundle" and t.bytes > 0
    assert spec_target("base@int8").precision == "int8" and spec_target("base").precision == "fp32"
    assert spec_target("tiny.en").spec.vocab == 51864
    with pytest.raises(DeviceError, match="unknown dense model"):
        spec_target("huge")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DeviceError, match="neither a bundle"):
        spec_target(str(tmp_path / "junk"))
    assert isinstance(t.spec.encoder[0].self_attn, AttnSpec)


def test_what_ships_to_a_device_is_only_the_runtime():
    """devbench.py and the files uploaded with it import only stdlib, numpy, onnxruntime and the runtime."""
    import ast
    import sys

    from slimwhisper.devices.runners import DEVBENCH, runtime_files

    names = {arc for _p, arc in runtime_files()}
    assert names >= {"devbench.py", "slimwhisper/errors.py", "slimwhisper/runtime/bundle.py"}
    assert all(n == "devbench.py" or n.startswith(("slimwhisper/runtime/", "slimwhisper/errors.py",
                                                    "slimwhisper/__init__.py")) for n in names)
    tree = ast.parse(DEVBENCH.read_text())
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    outside = {f for f in found if f.split(".")[0] not in sys.stdlib_module_names}
    wrong = {f for f in outside if f not in {"numpy", "onnxruntime", "slimwhisper", "slimwhisper.errors"}
             and not f.startswith("slimwhisper.runtime")}
    assert "numpy" in outside and not wrong, wrong


def test_fit_phase_recovers_efficiency_and_overhead_and_falls_back_when_runs_are_alike():
    from slimwhisper.devices.calibrate import fit_phase

    roofs = [0.002, 0.004, 0.009]
    measured = [r / 0.4 + 0.0015 for r in roofs]  # efficiency 0.4, 1.5 ms per call
    eff, ms = fit_phase(roofs, measured, prior_ms=0.0)
    assert eff == pytest.approx(0.4, rel=1e-6) and ms == pytest.approx(1.5, rel=1e-6)
    eff1, ms1 = fit_phase([0.004, 0.0041], [0.0115, 0.0118], prior_ms=0.5)  # too alike to separate the terms
    assert ms1 == 0.5 and eff1 == pytest.approx(((0.004 / 0.011) * (0.0041 / 0.0113)) ** 0.5, rel=1e-6)
