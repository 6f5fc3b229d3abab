"""Cost per turn in USD from the counts the benchmark measured, with the unit prices as parameters."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class UnitPrices:
    """AWS list prices (USD) as published in 2025 for us-east-1; check the Seoul region's price pages before relying
    on them. Every one is a `voicebot bench --price-*` parameter."""

    transcribe_per_min: float = 0.024
    """Transcribe streaming, tier 1; billed per second with a 15 s minimum per stream."""
    transcribe_min_s: float = 15.0
    haiku_input_per_mtok: float = 1.00
    haiku_output_per_mtok: float = 5.00
    polly_neural_per_mchar: float = 16.00
    iot_per_m_messages: float = 1.00
    """IoT Core messaging, metered in 5 KB steps."""
    iot_rule_per_m: float = 0.15
    iot_action_per_m: float = 0.15
    lambda_arm_per_gb_s: float = 0.0000133334
    lambda_per_m_requests: float = 0.20
    chars_per_token: float = 1.2
    """Korean characters per Claude token (an estimate: the model's tokenizer is not public)."""


@dataclass(frozen=True)
class TurnCounts:
    utterance_s: float
    prompt_chars: float
    answer_chars: float
    polly_chars: float
    iot_units: float
    rules_triggered: float
    lambda_gb_s: float
    lambda_requests: float


def per_turn(c: TurnCounts, p: UnitPrices) -> dict[str, float]:
    parts = {
        "transcribe": max(p.transcribe_min_s, c.utterance_s) / 60 * p.transcribe_per_min,
        "bedrock_input": c.prompt_chars / p.chars_per_token / 1e6 * p.haiku_input_per_mtok,
        "bedrock_output": c.answer_chars / p.chars_per_token / 1e6 * p.haiku_output_per_mtok,
        "polly": c.polly_chars / 1e6 * p.polly_neural_per_mchar,
        "iot_messages": c.iot_units / 1e6 * p.iot_per_m_messages,
        "iot_rules": c.rules_triggered / 1e6 * (p.iot_rule_per_m + p.iot_action_per_m),
        "lambda": c.lambda_gb_s * p.lambda_arm_per_gb_s + c.lambda_requests / 1e6 * p.lambda_per_m_requests,
    }
    return {k: round(v, 7) for k, v in parts.items()}


def idle_device_day(p: UnitPrices, *, false_streams_per_day: float, mean_stream_s: float) -> tuple[float, float]:
    """STT cost of a day with nobody speaking: (with VAD gating, streaming the microphone all day)."""
    with_vad = false_streams_per_day * max(p.transcribe_min_s, mean_stream_s) / 60 * p.transcribe_per_min
    without = 86_400 / 60 * p.transcribe_per_min
    return round(with_vad, 4), round(without, 2)


def units(size: int) -> int:
    return max(1, math.ceil(size / 5120))


def prices_dict(p: UnitPrices) -> dict[str, float]:
    return asdict(p)
