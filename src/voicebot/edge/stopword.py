"""The stop word: while the device speaks, its own VAD and recognizer listen for one word ("그만") that cancels the
answer. A processor of its own beside the interpreter's question path, so that neither knows the other's state."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from voicebot.edge.stt import RetryPolicy, SttBackend, SttError, UtteranceTranscriber
from voicebot.edge.vad import SpeechAudio, SpeechEnded, SpeechStarted, VadGate, VadSettings

log = logging.getLogger(__name__)


class StopWordListener:
    """Feeds frames heard while the device speaks to a recognizer, one utterance at a time, and calls ``on_text``
    with what was heard (partials and the final). A recognizer failure means no stop word this time, nothing more."""

    def __init__(self, stt: SttBackend, vad: VadSettings, retry: RetryPolicy, on_text: Callable[[str], None],
                 in_background: Callable[[Coroutine[Any, Any, None]], Any]) -> None:
        self.stt = stt
        self.vad = VadGate(vad)
        self.retry = retry
        self.on_text = on_text
        self.in_background = in_background
        self.utterance: UtteranceTranscriber | None = None

    @property
    def active(self) -> bool:
        """Someone is saying something that may be the stop word: all of it comes here, none to the question path."""
        return self.utterance is not None

    async def process(self, frame: bytes) -> bool:
        """One frame; True when an utterance just ended (the caller keeps the microphone muted a little longer)."""
        try:
            for event in self.vad.process(frame):
                if isinstance(event, SpeechStarted):
                    self.utterance = UtteranceTranscriber(self.stt, on_partial=self.on_text, retry=self.retry)
                    await self.utterance.start()
                    for f in event.preroll:
                        await self.utterance.send(f)
                elif isinstance(event, SpeechAudio) and self.utterance:
                    await self.utterance.send(event.frame)
                elif isinstance(event, SpeechEnded) and self.utterance:
                    utterance, self.utterance = self.utterance, None
                    self.in_background(self._end(utterance))
                    return True
        except SttError as exc:  # no stop word this time; the device keeps speaking and listening
            log.error("stop word recognition failed: %s", exc)
            await self.close()
        return False

    async def _end(self, utterance: UtteranceTranscriber) -> None:
        try:
            self.on_text(await utterance.end())
        except SttError as exc:
            log.error("stop word recognition failed: %s", exc)
            await utterance.abort()

    async def close(self) -> None:
        utterance, self.utterance = self.utterance, None
        self.vad.reset()
        if utterance is not None:
            await utterance.abort()


