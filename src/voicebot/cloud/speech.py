"""Speech: one answer sentence in, its audio out to ``R/T/audio`` in parts under the message size limit.

``speak_sentence`` is the whole logic; the Lambda handler (cloud/lambdas/speech) and the local rules engine call it with
the event the speech rule delivers (the answer's fields plus ``thing`` from ``topic(2)``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voicebot.cloud.publish import Publisher, send, send_error
from voicebot.cloud.tts import Tts, TtsError
from voicebot.protocol import (
    DEFAULT_TOPIC_ROOT,
    MAX_MESSAGE_BYTES,
    ProtocolError,
    SpeechEvent,
    Topics,
    decode,
    split_audio,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechSettings:
    topic_root: str = DEFAULT_TOPIC_ROOT
    message_limit: int = MAX_MESSAGE_BYTES


@dataclass
class SpeechDeps:
    tts: Tts
    publisher: Publisher
    settings: SpeechSettings = field(default_factory=SpeechSettings)


def speak_sentence(event: Mapping[str, Any], deps: SpeechDeps) -> int:
    """Synthesize one sentence and publish its audio parts. Returns how many messages were published."""
    thing = event.get("thing")
    if not isinstance(thing, str) or not thing:
        log.error("speech: event has no thing from topic(2); is the rule SQL right? (dropped)")
        return 0
    topics = Topics(deps.settings.topic_root, thing)
    try:
        answer = decode(SpeechEvent, dict(event))
    except ProtocolError as exc:
        seq = event.get("seq") if isinstance(event.get("seq"), int) else None
        rid = event.get("requestId") if isinstance(event.get("requestId"), str) else None
        log.warning("speech: bad answer message from %s: %s", thing, exc)
        send_error(deps.publisher, topics, source="speech", request_id=rid, seq=seq, detail=f"bad answer: {exc}")
        return 0

    if answer.text.strip():
        try:
            audio = deps.tts.synthesize(answer.text)
        except TtsError as exc:
            log.error("speech: %s/%s seq %d: %s", thing, answer.request_id, answer.seq, exc)
            # The player skips this seq at once instead of waiting out its gap timeout.
            send_error(deps.publisher, topics, source="speech", request_id=answer.request_id, seq=answer.seq,
                       last=answer.last, detail=str(exc))
            return 0
        data, fmt, rate = audio.data, audio.format, audio.sample_rate
    else:
        data, fmt, rate = b"", "pcm_s16le", 16_000  # the closing marker of an answer: nothing to say, but `last`

    messages = split_audio(request_id=answer.request_id, seq=answer.seq, last=answer.last, text=answer.text,
                           audio=data, format=fmt, sample_rate=rate, limit=deps.settings.message_limit)
    for message in messages:
        send(deps.publisher, topics.audio, message)
    return len(messages)
