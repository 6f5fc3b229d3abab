# voicebot: `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := mosquitto espeak-ng libportaudio2 libsndfile1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_TEXT ?= 안녕하세요, 오늘 서울 날씨는 어때요?

.PHONY: demo test lint system-deps venv gg-build clean

## Install the Debian packages that are missing (mosquitto, espeak-ng, PortAudio, libsndfile).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

## One full voice turn on the embedded local stack; writes out/reply.wav.
demo: system-deps venv
	$(BIN)/voicebot demo --text "$(DEMO_TEXT)" --out out

lint: venv
	$(BIN)/ruff check .
	$(BIN)/cfn-lint cloud/template.yaml

## The whole test suite (lint, template check, unit, integration and end-to-end tests).
test: system-deps venv lint
	$(BIN)/pytest -q

## Build the Greengrass components (what `gdk component build` runs): greengrass-build/ in each component folder.
gg-build: venv
	$(BIN)/python -m voicebot.gg_build

clean:
	rm -rf $(VENV) out greengrass-build .pytest_cache .ruff_cache

# ---------------------------------------------------------------------------------------------------------------------
# `sam build -t cloud/template.yaml` (BuildMethod: makefile) calls these with ARTIFACTS_DIR set: the thin handler,
# the shared voicebot package, and the function's requirements built for Lambda (python3.12, arm64).
# ---------------------------------------------------------------------------------------------------------------------
LAMBDA_PIP := python3 -m pip install --quiet --upgrade --target "$(ARTIFACTS_DIR)" --implementation cp \
	--python-version 3.12 --platform manylinux2014_aarch64 --only-binary=:all:

build-ChatFunction build-SpeechFunction: build-%Function:
	$(LAMBDA_PIP) -r cloud/lambdas/$(shell echo $* | tr A-Z a-z)/requirements.txt
	cp -r src/voicebot "$(ARTIFACTS_DIR)/"
	cp cloud/lambdas/$(shell echo $* | tr A-Z a-z)/app.py "$(ARTIFACTS_DIR)/"
	find "$(ARTIFACTS_DIR)/voicebot" -name __pycache__ -prune -exec rm -rf {} +
