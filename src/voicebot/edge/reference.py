"""The player's side of echo cancellation: what the speaker is about to play goes to the interpreter first.

The echo canceller must have the far end before its echo reaches the microphone. So when a sentence starts, the player
sends all of it at once (the first chunk just before playback, the rest just after), at 16 kHz in chunks of at most
0.25 s on the device-local ``reference`` topic, each stamped with the monotonic time its first sample will be heard
(now, plus the output's own buffer). When playback is cut (a barge-in, a newer answer, the stop word), a chunk without
samples says from when nothing more plays, so the canceller does not go on expecting an echo that never comes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np

from voicebot.edge.audio import to_rate
from voicebot.protocol import ReferenceMessage

RATE = 16_000
CHUNK = RATE // 4


class ReferencePublisher:
    def __init__(self, send: Callable[[ReferenceMessage], None], rate: int = RATE) -> None:
        self.send = send
        self.rate = rate
        self._cut_at = float("inf")

    def sentence(self, start: float, samples: np.ndarray) -> Callable[[], None]:
        """``samples`` (at the speaker's rate) will be heard from ``start`` on. Sends the first chunk now and
        returns what sends the rest: call it once playback has started. (Sending a long sentence takes milliseconds,
        more on a Pi; were it all sent before playback, the first sample would be heard that much later than its
        stamp says, by a different amount for each sentence, and the echo filters would have to learn the room's
        delay again at every sentence.)"""
        pcm = to_rate(samples, self.rate, RATE).astype("<i2")
        self._cut_at = float("inf")

        def chunk(i: int) -> None:
            if start + i / RATE < self._cut_at:  # (nothing after a cut: it is not played)
                self.send(ReferenceMessage(start=start + i / RATE,
                                           pcm=base64.b64encode(pcm[i:i + CHUNK].tobytes()).decode("ascii")))

        def rest() -> None:
            for i in range(CHUNK, len(pcm), CHUNK):
                chunk(i)

        if len(pcm):
            chunk(0)
        return rest

    def cut(self, at: float) -> None:
        """Nothing more plays from ``at`` on."""
        self._cut_at = at
        self.send(ReferenceMessage(start=at, pcm=""))
