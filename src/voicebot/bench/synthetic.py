"""Deterministic stand-ins for the cloud services, with their latencies as parameters, that record when they ran."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.messages import HumanMessage
from pydantic import Field

from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import SynthesizedAudio
from voicebot.sentences import SentenceSplitter

#: The default four-sentence answer (what Claude Haiku typically says to a weather question, a little long).
ANSWER = ("오늘 서울은 하루 종일 맑고 따뜻할 거예요. 낮 최고 기온은 25도까지 올라가요. "
          "저녁에는 바람이 조금 불 수 있어요. 외출하실 때 가벼운 겉옷을 챙기세요.")


@dataclass
class ModelCall:
    started: float
    tokens: list[tuple[float, str]] = field(default_factory=list)  # (time yielded, token)
    prompt_chars: int = 0

    def first_piece(self, first_clause_chars: int = 0) -> tuple[float, str] | None:
        """When the token that completed the first sentence (or first clause, as the chat splits it) was yielded, and
        that piece: the LLM's share of the critical path."""
        splitter = SentenceSplitter(first_clause_chars=first_clause_chars)
        for t, token in self.tokens:
            if pieces := splitter.feed(token):
                return t, pieces[0]
        rest = splitter.flush()
        return (self.tokens[-1][0], rest[0]) if self.tokens and rest else None


class SyntheticChatModel(LoopbackChatModel):
    """Waits ``first_token_delay_s``, then streams ``answer`` at ``tokens_per_s``; records every call by question."""

    calls: dict[str, list[ModelCall]] = Field(default_factory=dict)
    """Every call, by question (a question asked again has several)."""

    def call(self, question: str, after: float = float("-inf")) -> ModelCall | None:
        """The first call for ``question`` that started at or after ``after`` (a turn's chat invocation)."""
        return next((c for c in self.calls.get(question, []) if c.started >= after), None)

    def _stream(self, messages, stop=None, run_manager=None, **kwargs: Any):
        question = str([m for m in messages if isinstance(m, HumanMessage)][-1].content)
        call = ModelCall(time.monotonic(), prompt_chars=sum(len(str(m.content)) for m in messages))
        self.calls.setdefault(question, []).append(call)
        for chunk in super()._stream(messages, stop, run_manager, **kwargs):
            call.tokens.append((time.monotonic(), chunk.text))
            yield chunk


class SyntheticTts:
    """Takes ``base_s + per_char_s * len(text)``; returns 16 kHz PCM lasting ``audio_s_per_char * len(text)``."""

    name = "synthetic"

    def __init__(self, *, base_s: float = 0.12, per_char_s: float = 0.002, audio_s_per_char: float = 0.08) -> None:
        self.base_s = base_s
        self.per_char_s = per_char_s
        self.audio_s_per_char = audio_s_per_char
        self.last = threading.local()  # (start, end) of this thread's last call: read right after the handler

    def service_s(self, text: str) -> float:
        return self.base_s + self.per_char_s * len(text)

    def synthesize(self, text: str) -> SynthesizedAudio:
        start = time.monotonic()
        time.sleep(self.service_s(text))  # the simulated service time
        n = int(16_000 * self.audio_s_per_char * len(text))
        tone = (np.sin(np.arange(n) * 2 * np.pi * 220 / 16_000) * 3000).astype("<i2")
        self.last.span = (start, time.monotonic())
        return SynthesizedAudio(tone.tobytes(), "pcm_s16le", 16_000)
