"""Command-line options of `voicebot bench` (kept apart so that building the CLI parser imports nothing heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

from voicebot.bench.cost import UnitPrices
from voicebot.edge.settings import InterpreterConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    interpreter = InterpreterConfig.defaults()  # the component's own defaults (light: the model is not built)
    p.add_argument("--quick", action="store_true", help="fewer turns (about 5 minutes on 2 cores; the full run about "
                                                       "12)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--plot", type=Path, help="write the waterfall and TTFA distribution to this PNG")
    p.add_argument("--turns", type=int, default=0, help="sequential turns per mode (default 3 quick, 10 full)")
    p.add_argument("--devices", type=int, default=100, help="simulated devices in the fleet phase")
    p.add_argument("--fleet-turns", type=int, default=0, help="turns per device in the fleet phase (1 quick, 3 full)")
    p.add_argument("--fleet-spread-s", type=float, default=1.0,
                   help="devices start within this many seconds (0: all at the same instant)")
    p.add_argument("--ttft-ms", type=float, default=600,
                   help="synthetic model: time to the first token in ms (Bedrock Haiku from Seoul is about this)")
    p.add_argument("--tokens-per-s", type=float, default=80, help="synthetic model: tokens per second after the first")
    p.add_argument("--tts-base-ms", type=float, default=120,
                   help="synthetic speech service: time to synthesize a sentence, fixed part in ms")
    p.add_argument("--tts-per-char-ms", type=float, default=2,
                   help="synthetic speech service: time to synthesize a sentence, per character in ms")
    p.add_argument("--answer", default=None, help="what the synthetic model answers (default: four sentences about "
                                                  "the weather)")
    p.add_argument("--first-clause-chars", type=int, default=None,
                   help="the chat's first-clause release in letters (default: the chat's own; 0: sentences only)")
    p.add_argument("--audio-ms-per-char", type=float, default=80, help="synthetic speech length per character")
    p.add_argument("--input-minutes", type=float, default=10, help="length of the long interpreter input")
    p.add_argument("--eos-turns", type=int, default=0,
                   help="end-of-speech turns per mode and lag (default 6 quick, 20 full; 0 with --skip-eos)")
    p.add_argument("--skip-eos", action="store_true", help="skip the end-of-speech phase")
    p.add_argument("--skip-eos-vosk", action="store_true", help="in that phase, skip the run with the real Vosk")
    p.add_argument("--early-end-ms", type=int, default=interpreter.early_end_ms,
                   help="the interpreter's EarlyEndMs in that phase")
    p.add_argument("--preempt-ms", type=int, default=interpreter.preempt_ms,
                   help="the interpreter's PreemptMs in that phase")
    p.add_argument("--stt-partial-every-ms", type=float, default=150,
                   help="synthetic recognizer: a partial result this often (Transcribe: every 100-200 ms)")
    p.add_argument("--stt-lags-ms", default="0,300,500,800",
                   help="synthetic recognizer: the partial lags swept (each partial this much later than the audio "
                        "it shows), comma-separated ms")
    p.add_argument("--end-of-turn", choices=["hangover", "text", "audio", "both"], default=interpreter.end_of_turn,
                   help="the interpreter's EndOfTurn reported as the default in that phase (all four are measured)")
    p.add_argument("--turn-model-ms", type=int, default=interpreter.turn_model_ms,
                   help="the interpreter's TurnModelMs in that phase")
    p.add_argument("--stt-final-ms", type=float, default=300, help="synthetic recognizer: final after the audio")
    p.add_argument("--skip-footprint", action="store_true", help="skip the memory and CPU phase")
    p.add_argument("--skip-barge-in", action="store_true", help="skip the full-duplex (echo cancellation) phase")
    p.add_argument("--barge-in-minutes", type=float, default=0,
                   help="minutes of device speech with nobody talking, for false barge-ins (default 3 quick, 10 full)")
    p.add_argument("--barge-in-trials", type=int, default=0,
                   help="live barge-in trials in a simulated room, in real time (default 6 quick, 20 full)")
    p.add_argument("--price-transcribe-per-min", type=float, default=UnitPrices.transcribe_per_min,
                   help="cost model: Amazon Transcribe streaming, USD per minute")
    p.add_argument("--price-haiku-input", type=float, default=UnitPrices.haiku_input_per_mtok,
                   help="cost model: Claude Haiku input, USD per million tokens")
    p.add_argument("--price-haiku-output", type=float, default=UnitPrices.haiku_output_per_mtok,
                   help="cost model: Claude Haiku output, USD per million tokens")
    p.add_argument("--price-polly-per-mchar", type=float, default=UnitPrices.polly_neural_per_mchar,
                   help="cost model: Amazon Polly neural voices, USD per million characters")
    p.add_argument("--price-iot-per-m", type=float, default=UnitPrices.iot_per_m_messages,
                   help="cost model: AWS IoT Core messaging, USD per million messages (5 KB steps)")
