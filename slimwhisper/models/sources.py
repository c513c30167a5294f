"""The built-in source kinds: bundled names, transformers folders, CTranslate2 folders, hub ids.

(openai ``.pt`` checkpoints: ``openai_pt``; pruned folders: ``slimdir``; both register beside these.)

Each kind is a ``SourceKind`` (detect + load). Heavy libraries (torch, transformers) are imported
inside the load functions so that ``import slimwhisper.models`` stays cheap for the CLI.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from slimwhisper.models.api import LoadedModel, LoadOptions, ModelLoadError, SourceKind
from slimwhisper.models.bundled import BUNDLED, TOKENIZER_FOR_VOCAB
from slimwhisper.models.cache import DONE_MARKER, converted_dir, file_chunks, sha256_of
from slimwhisper.models.hf_folder import (
    WEIGHT_FILES,
    load_transformers_folder,
    make_loaded,
    to_device,
)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# ---- CTranslate2 (bundled or a folder) -----------------------------------------------------------
def _convert_once(
    out_dir: Path, read_bytes, ct2_config: dict, tokenizer_json: Path | None, record: dict
) -> None:
    """Convert unless a finished conversion (with its done-marker) is already cached."""
    if (out_dir / DONE_MARKER).exists():
        return
    from slimwhisper.models.convert import convert_ct2
    from slimwhisper.models.ct2 import CT2FormatError, read_ct2

    try:
        ct2 = read_ct2(read_bytes(), label=record.get("model_bin"))
        if tokenizer_json is None:
            vocab = int(ct2.get("decoder/embeddings/weight").shape[0])
            donor = TOKENIZER_FOR_VOCAB.get(vocab)
            if donor is None:
                raise CT2FormatError(f"no tokenizer.json beside model.bin and none bundled for vocabulary {vocab}")
            tokenizer_json = BUNDLED[donor].tokenizer_json()
            record["tokenizer_from"] = f"bundled {donor} (no tokenizer.json beside model.bin)"
        convert_ct2(ct2, ct2_config, tokenizer_json, out_dir, record)
    except CT2FormatError as exc:
        raise ModelLoadError(f"cannot convert {record.get('model_bin')}: {exc}") from exc


def _record(out_dir: Path) -> dict:
    return json.loads((out_dir / DONE_MARKER).read_text(encoding="utf-8"))


def load_bundled(name: str, options: LoadOptions) -> LoadedModel:
    bundled = BUNDLED[name]
    sha = bundled.verify()  # before any use, also on a cache hit (cheap: ~0.3 s)
    out_dir = converted_dir(options, name, sha)
    _convert_once(
        out_dir, bundled.read_verified, bundled.ct2_config(), bundled.tokenizer_json(),
        {"source": name, "kind": "bundled", "sha256": sha, "model_bin": f"bundled {name} model.bin"},
    )
    return load_transformers_folder(out_dir, options, source=name, kind="bundled", name=name, sha256=sha,
                                    extra={"converted_from": "ctranslate2"})


def _is_ct2_dir(source: str) -> bool:
    p = Path(source)
    return p.is_dir() and (p / "model.bin").is_file() and (p / "config.json").is_file()


def load_ct2_dir(source: str, options: LoadOptions) -> LoadedModel:
    p = Path(source)
    model_bin = p / "model.bin"
    sha = sha256_of(file_chunks([model_bin]))
    _check_known_sizes(model_bin, sha)
    out_dir = converted_dir(options, "ct2", sha)
    tok = p / "tokenizer.json"
    try:
        ct2_config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{p / 'config.json'} is not valid JSON ({exc}); re-copy the CTranslate2 folder") from exc
    _convert_once(out_dir, lambda: _bytes_with_hash(model_bin, sha), ct2_config, tok if tok.is_file() else None,
                  {"source": str(p.resolve()), "kind": "ct2", "sha256": sha, "model_bin": str(model_bin)})
    rec = _record(out_dir)
    extra = {"converted_from": "ctranslate2"}
    if "tokenizer_from" in rec:
        extra["tokenizer_from"] = rec["tokenizer_from"]
    return load_transformers_folder(out_dir, options, source=source, kind="ct2", name=p.resolve().name, sha256=sha,
                                    extra=extra)


def _bytes_with_hash(path: Path, sha: str) -> bytes:
    """The file's bytes, refused if they changed since they were hashed (the cache is keyed by it)."""
    data = path.read_bytes()
    if sha256_of([data]) != sha:
        raise ModelLoadError(f"{path} changed while it was being loaded; try again once it is complete")
    return data


def _check_known_sizes(model_bin: Path, sha: str) -> None:
    """Refuse a damaged copy of a bundled model.bin: same size, mostly the same bytes, another hash.

    A fine-tuned model of the same architecture has the same size too, but differs almost
    everywhere, so it is only refused when at most 10% of its 1 MiB blocks differ.
    """
    size = model_bin.stat().st_size
    for b in BUNDLED.values():
        try:
            parts = b.part_paths()
        except ModelLoadError:
            continue
        if sha == b.sha256 or size != sum(path.stat().st_size for path in parts):
            continue
        pairs = zip(_blocks(file_chunks([model_bin])), _blocks(file_chunks(parts)), strict=True)
        flags = [x != y for x, y in pairs]
        if sum(flags) <= 0.1 * len(flags):
            raise ModelLoadError(
                f"{model_bin} is a damaged copy of the bundled {b.name} model.bin: same size ({size} bytes), "
                f"{sum(flags)} of {len(flags)} 1 MiB blocks differ, sha256 {sha} instead of {b.sha256}. "
                "The file is tampered with or corrupt; re-copy it"
            )


def _blocks(chunks, size: int = 1 << 20):
    """Re-cut a byte stream (possibly several files) into fixed-size blocks."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


# ---- transformers folder, openai .pt, hub id -----------------------------------------------------
def _is_hf_dir(source: str) -> bool:
    p = Path(source)
    cfg = p / "config.json"
    if not (p.is_dir() and cfg.is_file() and any((p / f).exists() for f in WEIGHT_FILES)):
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "whisper"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_hf_dir(source: str, options: LoadOptions) -> LoadedModel:
    p = Path(source)
    weights = [p / f for f in WEIGHT_FILES if (p / f).is_file()][:1]
    sha = sha256_of(file_chunks(weights)) if weights else None
    return load_transformers_folder(p, options, source=source, kind="transformers", name=p.resolve().name, sha256=sha)


def _is_hub_id(source: str) -> bool:
    return bool(HUB_ID.fullmatch(source)) and not Path(source).exists()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_hub(source: str, options: LoadOptions) -> LoadedModel:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    online = _hub_reachable()
    try:
        # Offline, a model already in the local Hugging Face cache still loads.
        model = WhisperForConditionalGeneration.from_pretrained(
            source, dtype=torch.float32, attn_implementation=options.attn_implementation, local_files_only=not online
        )
        processor = WhisperProcessor.from_pretrained(source, local_files_only=not online)
    except (OSError, ValueError) as exc:  # transformers wraps connection / not-found errors in OSError
        why = (
            "has no such Whisper model"
            if online
            else "is not reachable (offline or no network) and it is not in the local Hugging Face cache"
        )
        raise ModelLoadError(
            f"could not load {source!r}: the Hugging Face hub {why} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). No local folder {source!r} exists either. "
            f"Pass a local folder or a bundled name ({', '.join(BUNDLED)})."
        ) from exc
    model = to_device(model, options.device)
    return make_loaded(model, processor, path=None, source=source, kind="hub", name=source.split("/")[-1],
                   sha256=None, extra={})


KINDS = (
    SourceKind("bundled", lambda s: s in BUNDLED, load_bundled, f"a bundled model name: {', '.join(BUNDLED)} (offline)",
               priority=10),
    SourceKind("transformers", _is_hf_dir, load_hf_dir,
               "a local transformers Whisper folder (config.json with model_type whisper + weights)", priority=30),
    SourceKind("ct2", _is_ct2_dir, load_ct2_dir, "a local CTranslate2 folder (model.bin + config.json)", priority=40),
    # Last: only an "org/name" that is not a local path, and the only kind that may need the network.
    SourceKind("hub", _is_hub_id, load_hub, "a Hugging Face hub id org/name (needs network)", priority=90),
)
