"""Pipecat's Smart Turn v3: does the audio of the last seconds sound like a finished turn?

The model (BSD-2, 23 languages, Korean included) decides from the voice alone (intonation, the final syllable's
length), so it can end a turn before a streaming recognizer has shown the last word. It is an 8.7 MB ONNX graph over
Whisper log-mel features of the last 8 s of 16 kHz audio; its output is the probability that the turn is complete.

Weights and feature extractor come from the ``pipecat-ai`` wheel without importing ``pipecat`` (its package import
patches ``asyncio.wait_for`` and pulls a large dependency tree): the Makefile installs that wheel with ``--no-deps``,
and the interpreter's Greengrass artifact carries just the two files (``turn/``, ``VOICEBOT_TURN_MODEL``). Nothing is
downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 8  # the model hears the last 8 s (zero-padded in front when shorter)
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
FEATURES_FILE = "_whisper_features.py"
_IN_WHEEL = "pipecat/audio/turn/smart_turn"
#: The environment variable naming the folder with both files (the Greengrass artifact's ``turn/``).
ENV_DIR = "VOICEBOT_TURN_MODEL"


class TurnModelUnavailable(RuntimeError):
    """onnxruntime or the weights are missing: the audio end-of-turn model cannot run here."""


def model_files() -> tuple[Path, Path]:
    """The ONNX weights and the numpy feature extractor: from ``$VOICEBOT_TURN_MODEL``, else from the installed
    ``pipecat-ai`` distribution (its files, not its package)."""
    folder = os.environ.get(ENV_DIR)
    if folder:
        candidates = [(Path(folder) / MODEL_FILE, Path(folder) / FEATURES_FILE)]
    else:
        candidates = []
        try:
            from importlib.metadata import PackageNotFoundError, distribution

            dist = distribution("pipecat-ai")
            base = Path(str(dist.locate_file(_IN_WHEEL)))
            candidates.append((base / "data" / MODEL_FILE, base / FEATURES_FILE))
        except PackageNotFoundError:
            pass
    for weights, features in candidates:
        if weights.is_file() and features.is_file():
            return weights, features
    where = f"${ENV_DIR}={folder}" if folder else "the pipecat-ai distribution (make venv installs it, --no-deps)"
    raise TurnModelUnavailable(f"the Smart Turn v3 model ({MODEL_FILE}) is not in {where}")


def _load_features(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("voicebot_smart_turn_features", path)
    if spec is None or spec.loader is None:
        raise TurnModelUnavailable(f"cannot load the feature extractor {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class TurnVerdict:
    complete: bool
    probability: float
    seconds: float
    """The time this decision took (features and inference)."""


class SmartTurnModel:
    """One ONNX session, one thread (the Pi's other cores belong to the recognizer and the player)."""

    def __init__(self, *, threshold: float = 0.5, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise TurnModelUnavailable("the audio end-of-turn model needs onnxruntime (the device extra)") from exc
        weights, features = model_files()
        self._features = _load_features(features)
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(str(weights), sess_options=options)
        self.threshold = threshold
        self.path = weights

    def predict(self, pcm: bytes | np.ndarray) -> TurnVerdict:
        """``pcm``: 16 kHz mono int16 (bytes or array), the turn so far; only its last 8 s are heard."""
        started = time.perf_counter()
        samples = np.frombuffer(pcm, "<i2") if isinstance(pcm, bytes) else np.asarray(pcm, dtype=np.int16)
        audio = samples[-WINDOW_S * SAMPLE_RATE:].astype(np.float32) / 32768.0
        if audio.size < WINDOW_S * SAMPLE_RATE:
            audio = np.pad(audio, (WINDOW_S * SAMPLE_RATE - audio.size, 0))
        mel = self._features.compute_whisper_log_mel_features(audio, do_normalize=True)
        out = self._session.run(None, {"input_features": np.expand_dims(mel, 0).astype(np.float32)})
        probability = float(np.asarray(out[0]).reshape(-1)[0])
        return TurnVerdict(probability > self.threshold, probability, time.perf_counter() - started)
