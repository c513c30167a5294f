# Two entry points: `make demo` (set up, then the main job) and `make test` (set up, then pytest).
# Set-up is one stamped target, .venv/.installed, redone only when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
THREADS ?= 2

# Real data lives beside the repo (../shared/data); without it the demo runs on a small SYNTHETIC
# set made offline with piper TTS (labelled "synthetic" in every figure it produces).
SHARED_DATA := ../shared/data
SYNTH_DATA := build/synthetic-en
DEMO_DATA ?= $(if $(wildcard $(SHARED_DATA)/librispeech-clean-mini/transcripts.tsv),$(SHARED_DATA)/librispeech-clean-mini,$(SYNTH_DATA))
DEMO_OUT := demo-out
# `slimwhisper run` (prune -> export fp32+int8 -> bench): calibrate on ljspeech/train when present
# (never on the evaluation clips), else on the demo set itself (then say so: the figures are optimistic).
DEMO_RECIPE ?= dec-self-attn-50
# One-shot head removal makes greedy decoding loop on some clips; a short distillation from the
# dense model (the teacher) brings the pruned model back before export.
DEMO_RECOVER ?= distill
DEMO_RECOVER_STEPS ?= 30
DEMO_CALIB ?= $(if $(wildcard $(SHARED_DATA)/ljspeech/train.tsv),$(SHARED_DATA)/ljspeech/train.tsv,$(DEMO_DATA))

.PHONY: demo test install demo-data clean-venv

install: $(STAMP)

# torch first and pinned: it resolves to the local CPU wheel; an unpinned torch pulled in by a
# dependency would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,peers,recovery,tts]'
	touch $@

demo-data: $(STAMP)
	@if [ "$(DEMO_DATA)" = "$(SYNTH_DATA)" ]; then \
		echo "demo data: a SYNTHETIC set (piper TTS) at $(SYNTH_DATA), not real speech"; \
		$(BIN)/slimwhisper synth-data $(SYNTH_DATA); \
	fi

demo: $(STAMP) demo-data
	mkdir -p $(DEMO_OUT)
	$(BIN)/slimwhisper eval --model tiny.en --data $(DEMO_DATA) --threads $(THREADS) --json $(DEMO_OUT)/eval-tiny.en.json
	$(BIN)/slimwhisper run --model tiny.en --recipe $(DEMO_RECIPE) --calib $(DEMO_CALIB) --calib-n 16 --data $(DEMO_DATA) \
		--recover $(DEMO_RECOVER) --recover-steps $(DEMO_RECOVER_STEPS) \
		--threads $(THREADS) --repeat 3 --timing-limit 5 --out $(DEMO_OUT)/run-tiny.en --force

# pytest exit 5 means "no tests collected": say so loudly rather than pass silently or hide it.
test: $(STAMP)
	$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): failing" >&2; exit 1; fi; \
	exit $$rc

clean-venv:
	rm -rf $(VENV)
