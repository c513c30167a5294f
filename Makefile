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
# `slimwhisper run` (prune -> recover -> export fp32+int8 -> bench). With the real data: the best
# tiny.en recipe measured within 15 CPU minutes of training (issue 10): oneshot-35 (35% of layer
# parameters, sequential least-squares re-fit, calibrated as measured on 1,024 clips of the four
# training sets packed into 30 s windows; ~10 min on 2 cores, cached for a rerun), then 130 steps of
# the kd-ts distillation recipe on all 2,189 training clips (14.6 CPU min; the teacher cache, ~20 CPU
# min, is built once). Measured: ljspeech/dev / clean-mini 6.63 / 4.03 greedy (dense 5.89 / 4.44).
# Never the evaluation clips. The int8 encoder is calibrated on the same sets. Without it: a small recipe
# calibrated on the synthetic demo set itself (too few clips for oneshot-25's sensitivity hold-out),
# with a short distillation since one-shot head removal loops on some clips.
HAVE_REAL := $(wildcard $(SHARED_DATA)/ljspeech/train.tsv)
CALIB_SETS := $(wildcard $(addprefix $(SHARED_DATA)/,ljspeech/train.tsv librispeech-train-unlabeled asterisk-prompts speechocean762/train.tsv))
DEMO_RECIPE ?= $(if $(HAVE_REAL),oneshot-35,dec-self-attn-50)
DEMO_RECOVER ?= $(if $(HAVE_REAL),kd-ts,distill)
DEMO_RECOVER_STEPS ?= $(if $(HAVE_REAL),130,30)
DEMO_CALIB ?= $(if $(HAVE_REAL),$(CALIB_SETS),$(DEMO_DATA))
DEMO_CALIB_N ?= $(if $(HAVE_REAL),,16)

.PHONY: demo test install demo-data clean-venv ssh-tools test-arm

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
	$(BIN)/slimwhisper eval --model tiny.en --data $(DEMO_DATA) --threads $(THREADS) --json $(DEMO_OUT)/eval-tiny.en.json --force
	$(BIN)/slimwhisper run --model tiny.en --recipe $(DEMO_RECIPE) $(foreach c,$(DEMO_CALIB),--calib $(c)) \
		$(if $(DEMO_CALIB_N),--calib-n $(DEMO_CALIB_N)) --data $(DEMO_DATA) \
		$(if $(DEMO_RECOVER),--recover $(DEMO_RECOVER) --recover-steps $(DEMO_RECOVER_STEPS)) \
		--threads $(THREADS) --repeat 3 --timing-limit 5 --out $(DEMO_OUT)/run-tiny.en --force

# pytest exit 5 means "no tests collected": say so loudly rather than pass silently or hide it.
test: $(STAMP) ssh-tools
	$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): failing" >&2; exit 1; fi; \
	exit $$rc

clean-venv:
	rm -rf $(VENV)

# tests/test_devices_ssh.py runs a real OpenSSH sshd on 127.0.0.1. Install it where apt-get and root
# are there (policy-rc.d stops Debian from starting a system-wide sshd on port 22); anywhere else,
# or if the install fails, say so and go on: that test then skips with the reason.
ssh-tools:
	@if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "ssh-tools: no root/apt-get: the loopback-sshd test will skip" >&2; exit 0; fi; \
	own_rc=0; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
		chmod +x /usr/sbin/policy-rc.d; own_rc=1; fi; \
	if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client) \
		>/tmp/slimwhisper-ssh-tools.log 2>&1; then echo "ssh-tools: installed openssh-server, openssh-client"; \
	else echo "ssh-tools: apt-get failed (see /tmp/slimwhisper-ssh-tools.log): the loopback-sshd test will skip" >&2; fi; \
	if [ $$own_rc = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; exit 0

# Opt-in, slow, never part of `make test`: a bundle under qemu-user in an arm64 Debian rootfs
# (debootstrap + qemu-user-static, aarch64 numpy/onnxruntime wheels), transcript and logits vs x86.
# Emulated timings are never reported. ARM_PROFILE picks QEMU_CPU (rpi5: cortex-a76, rpi4: cortex-a72).
ARM_PROFILE ?= rpi5
test-arm: $(STAMP)
	@command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static
	SLIMWHISPER_ARM=1 SLIMWHISPER_ARM_PROFILE=$(ARM_PROFILE) $(BIN)/pytest -q -m slow tests/test_devices_arm.py
