"""report.json (every figure + machine + config), report.md (one table, ratios vs the first entry),
transcripts.jsonl (every hypothesis) and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_VERSION = 1

FLOPS_NOTE = ("FLOPs = 2 x multiply-accumulates of convolutions, projections, attention QK^T and AV, FFNs and "
              "the vocabulary projection; softmax, LayerNorm, GELU, bias adds and lookups are not counted "
              "(slimwhisper.spec.ArchSpec.flops, cross-checked against torch's FlopCounterMode).")
PROTOCOL_NOTE = ("All entries ran in one process on the same clips with the same threads. The accuracy pass over "
                 "all clips is also the warm-up; then {repeat} timing passes over {timed} clip(s) ran the entries "
                 "alternately (A B A B, rotating who starts). Figures: median [min-max] over the passes. "
                 "enc ms = encoder call(s) per 30 s window; dec ms/tok = (transcribe - encoder) / (tokens + 1); "
                 "s/clip and RTF = the whole public transcribe call. Peak RSS: a fresh child that imports, loads and "
                 "transcribes one clip (os.wait4); 'imports' = its RSS after importing the backend's libraries.")


def entry_json(e) -> dict[str, Any]:
    return {"id": e.id, "label": e.target.label, "source": e.target.source, "kind": e.target.kind,
            "variant": e.target.variant, "backend": e.backend, "status": e.status, "reason": e.reason,
            "info": e.runner.info if e.runner is not None else {}, "load_s": e.load_s, "static": e.static,
            "timing": e.timing, "accuracy": e.accuracy, "memory": e.memory}


def build_report(config, machine, dataset, clips, entries, skipped) -> dict[str, Any]:
    import os

    timed = min(config.timing_limit or len(clips), len(clips))
    if hasattr(os, "getloadavg"):  # a busy shared machine slows everything: say how busy it was
        machine = {**machine, "load_avg_at_end": list(os.getloadavg())}
    return {
        "report_version": REPORT_VERSION,
        "machine": machine,
        "config": config.to_dict(),
        "dataset": {"path": str(config.data), "name": getattr(dataset, "label", str(config.data)), "clips": len(clips),
                    "audio_s": sum(c.seconds for c in clips), "timing_clips": timed,
                    "synthetic": bool(getattr(dataset, "synthetic", False))},
        "notes": {"flops": FLOPS_NOTE, "protocol": PROTOCOL_NOTE.format(repeat=config.repeat, timed=timed)},
        "entries": [entry_json(e) for e in entries],
        "skipped": skipped,
    }


# ---- Markdown ------------------------------------------------------------------------------
def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return ""
    return f" ({value / ref:.2f}×)"


def _spread(t: dict | None, scale: float, fmt: str) -> str:
    if not t:
        return "—"
    return f"{t['median'] * scale:{fmt}} [{t['min'] * scale:{fmt}}–{t['max'] * scale:{fmt}}]"


COLUMNS = ("entry", "params M", "non-zero M", "disk MB", "enc GFLOP/30 s", "dec MFLOP/tok", "WER %",
           "WER % no fallback", "CER %",
           "vs ref WER %", "load s", "enc ms/30 s", "dec ms/tok", "s/clip", "RTF", "peak RSS MB (imports)")


def _row(e: dict, ref: dict | None) -> list[str]:
    st, tm, acc, mem = e["static"], e["timing"], e["accuracy"], e["memory"]
    rst = ref["static"] if ref else {}
    rtm = ref["timing"] if ref else {}
    rmem = ref["memory"] if ref else {}
    fl, rfl = st.get("flops", {}), rst.get("flops", {})

    def med(t: dict, key: str) -> float | None:
        return t[key]["median"] if t.get(key) else None

    def r(value, refvalue):
        return _ratio(value, refvalue) if ref is not None and e is not ref else ""

    params, nonzero, disk = st.get("params"), st.get("nonzero"), st.get("file_bytes")
    peak = mem.get("peak_rss_mb")
    cells = [
        e["id"],
        _num(params and params / 1e6, ".2f") + r(params, rst.get("params")),
        _num(nonzero and nonzero / 1e6, ".2f"),
        _num(disk and disk / 1e6, ".1f") + r(disk, rst.get("file_bytes")),
        _num(fl.get("encoder_window") and fl["encoder_window"] / 1e9, ".1f") + r(fl.get("encoder_window"), rfl.get("encoder_window")),
        _num(fl.get("decoder_token") and fl["decoder_token"] / 1e6, ".1f") + r(fl.get("decoder_token"), rfl.get("decoder_token")),
        _num(100 * acc["wer"], ".2f") if "wer" in acc else "—",
        _num(100 * acc["wer_no_fallback"], ".2f") if "wer_no_fallback" in acc else "—",
        _num(100 * acc["cer"], ".2f") if "cer" in acc else "—",
        _num(100 * acc["agreement_wer"], ".2f") if "agreement_wer" in acc else "—",
        _num(e["load_s"], ".2f"),
        _spread(tm.get("encoder_ms_per_window"), 1, ".0f") + r(med(tm, "encoder_ms_per_window"), med(rtm, "encoder_ms_per_window")),
        _spread(tm.get("decoder_ms_per_token"), 1, ".1f") + r(med(tm, "decoder_ms_per_token"), med(rtm, "decoder_ms_per_token")),
        _spread(tm.get("seconds_per_clip"), 1, ".2f") + r(med(tm, "seconds_per_clip"), med(rtm, "seconds_per_clip")),
        _num(med(tm, "rtf"), ".3f"),
        (f"{peak:.0f} ({mem['imports_rss_mb']:.0f})" + r(peak, rmem.get("peak_rss_mb"))) if peak else "—",
    ]
    if e["status"] != "ok":
        cells[1:] = ["—"] * (len(COLUMNS) - 1)
        cells[0] = f"{e['id']} — {e['status']}"
    return cells


def _load_note(m: dict[str, Any]) -> str:
    start, end = m.get("load_avg_at_start"), m.get("load_avg_at_end")
    if not start or not end:
        return ""
    note = f"  \nLoad average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in start)}, at end {'/'.join(f'{x:.1f}' for x in end)}"
    if max(start[0], end[0]) > (m.get("usable_cores") or m.get("logical_cores") or 1):
        note += ": above the core count, so absolute times are inflated by other work; compare ratios within this table"
    return note + "."


def _decoding_note(config: dict[str, Any]) -> str:
    fallback = config.get("fallback", False)
    note = ("openai-whisper defaults (greedy, timestamps, no-speech rule, temperature fallback 0.2-1.0; "
            "'WER % no fallback' is the same entry at temperature 0 only)" if fallback
            else "greedy, timestamps, no-speech rule, no temperature fallback")
    return note + f"; {config.get('batch_size', 1)} clip(s) per batch in the accuracy pass"


def markdown(report: dict[str, Any]) -> str:
    entries = report["entries"]
    ok = [e for e in entries if e["status"] == "ok"]
    ref = ok[0] if ok else None
    m, d = report["machine"], report["dataset"]
    ctx = report["config"]["flops_context"]
    lines = [
        "# slimwhisper benchmark",
        "",
        f"Dataset **{d['name']}**: {d['clips']} clips, {d['audio_s']:.1f} s of audio"
        + (" (SYNTHETIC speech)" if d["synthetic"] else "") + f"; timing on {d['timing_clips']} clip(s).",
        f"Machine: {m['cpu']}, {m['usable_cores'] or m['logical_cores']} usable cores, **{m['threads']} threads**; "
        + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ".",
        f"Decoding: {_decoding_note(report['config'])}.",
        f"Command: `{m['command']}`"
        + _load_note(m),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_row(e, ref)) + " |" for e in entries]
    lines += ["", f"Ratios (×) are against **{ref['id'] if ref else '—'}**, the first entry that ran. "
              f"'vs ref WER %' = WER of each transcript against that entry's transcript. "
              f"dec MFLOP/tok at a self-attention context of {ctx} tokens; enc GFLOP excludes the decoder's "
              "cross-attention K/V projections (listed in report.json as cross_kv_window). A slimwhisper bundle's "
              "encoder graph also computes those K/V once per window, so its enc ms includes work that torch and "
              "faster-whisper do inside their first decoder step.", ""]
    lines += [f"- {report['notes']['protocol']}", f"- {report['notes']['flops']}"]
    inflated = []  # one note for all of them, not one per entry
    for e in entries:
        if e["status"] != "ok":
            lines.append(f"- **{e['id']}**: {e['reason']}")
        wait4, peak = e["memory"].get("wait4_maxrss_mb"), e["memory"].get("peak_rss_mb")
        if wait4 and peak and wait4 > 1.1 * peak:
            inflated.append(wait4)
        if e["memory"].get("error"):
            lines.append(f"- **{e['id']}** memory: {e['memory']['error']}")
        if e["static"].get("spec_mismatch"):
            lines.append(f"- **{e['id']}**: module parameter counts differ from its spec: {e['static']['spec_mismatch']}")
    if inflated:
        lines.append(f"- peak RSS is each child's own VmHWM; os.wait4 read up to {max(inflated):.0f} MB for "
                     f"{len(inflated)} entr{'y' if len(inflated) == 1 else 'ies'} because ru_maxrss inherits the "
                     "parent's RSS across fork (kept in report.json as wait4_maxrss_mb)")
    lines.append("")
    return "\n".join(lines)


def write_report(folder: Path, report: dict[str, Any], entries, clips) -> None:
    from slimwhisper.bench.plots import write_plots

    report["plots"] = write_plots(folder, report)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report))
    with open(folder / "transcripts.jsonl", "w") as f:
        for i, clip in enumerate(clips):
            row = {"id": clip.id, "seconds": clip.seconds, "reference": clip.text}
            row.update({e.id: e.results[i].text for e in entries if e.status == "ok"})
            f.write(json.dumps(row) + "\n")
