"""The cloud side, on this machine: the rules engine running the template's rule SQL, calling the chat and speech
handlers in-process with local backends (offline LLM or Bedrock, espeak-ng, SQLite). Only the backends differ from
the Lambdas; the handlers, the rule SQL and the protocol are the production ones.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from voicebot.cloud.chat import ChatDeps, ChatSettings, answer_transcript
from voicebot.cloud.history import HistoryStore
from voicebot.cloud.publish import TransportPublisher
from voicebot.cloud.speech import SpeechDeps, SpeechSettings, speak_sentence
from voicebot.cloud.tts import Tts
from voicebot.local.rules import RulesEngine, load_rules
from voicebot.messaging import ConnectionSettings, Mqtt5Transport

log = logging.getLogger(__name__)


def default_template() -> Path:
    """``cloud/template.yaml`` of this checkout (the local engine runs the very rules that get deployed)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "cloud" / "template.yaml"
        if candidate.exists():
            return candidate
    raise FileNotFoundError("cloud/template.yaml not found above the voicebot package; pass --template")


@dataclass
class LocalCloud:
    """Rules engine + chat + speech on a broker. Use as a context manager."""

    broker_url: str
    model: BaseChatModel
    history: HistoryStore
    tts: Tts
    topic_root: str = "voicebot"
    template: Path | None = None
    chat_settings: ChatSettings | None = None
    outcomes: deque[Any] = field(default_factory=lambda: deque(maxlen=256))
    """The latest chat outcomes (bounded)."""
    max_workers: int = 16
    """Concurrent handler invocations (Lambda scales out; the benchmark's fleet raises this)."""
    on_invoke: Callable[[str, dict[str, Any], float, float], None] | None = None
    """Called after each invocation with (function, event, start, end) on the monotonic clock (benchmark timing)."""

    def __post_init__(self) -> None:
        self.transport = Mqtt5Transport(ConnectionSettings(broker=self.broker_url), client_id="voicebot-local-rules")
        publisher = TransportPublisher(self.transport)
        chat_settings = self.chat_settings or ChatSettings(topic_root=self.topic_root)
        self.chat = ChatDeps(model=self.model, history=self.history, publisher=publisher, settings=chat_settings)
        self.speech = SpeechDeps(tts=self.tts, publisher=publisher, settings=SpeechSettings(topic_root=self.topic_root))
        rules = load_rules(self.template or default_template(), topic_root=self.topic_root)
        self.engine = RulesEngine(self.transport, rules, {
            "ChatFunction": self._timed("ChatFunction", self._chat),
            "SpeechFunction": self._timed("SpeechFunction", lambda event: speak_sentence(event, self.speech)),
        }, max_workers=self.max_workers).start()

    def _timed(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        def invoke(event: dict[str, Any]) -> Any:
            start = time.monotonic()
            try:
                return handler(event)
            finally:
                if self.on_invoke:
                    self.on_invoke(name, event, start, time.monotonic())

        return invoke

    def _chat(self, event: dict[str, Any]) -> None:
        self.outcomes.append(answer_transcript(event, self.chat))

    def close(self) -> None:
        self.engine.close()
        self.transport.close()

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
