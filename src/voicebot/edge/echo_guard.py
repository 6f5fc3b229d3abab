"""The echo guard: the microphone is muted while the device's own player speaks, and a little after.

Without it the device hears its own answer and asks itself a question (what the source blog did). The player says
"speaking" on a device-local topic, repeated every 2 s while it speaks, and "idle" when it stops. Pure: every method
takes the current time, so it is tested without waiting.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class EchoGuard:
    """``echo_tail_s``, ``speaking_expiry_s`` and ``max_mute_s`` as in ``InterpreterSettings``."""

    def __init__(self, *, echo_tail_s: float, speaking_expiry_s: float, max_mute_s: float) -> None:
        self.echo_tail_s = echo_tail_s
        self.speaking_expiry_s = speaking_expiry_s
        self.max_mute_s = max_mute_s
        self.speaking = False  # the player's state
        self.player_request: str | None = None  # what it is speaking
        self._since = 0.0
        self._seen_at = 0.0
        self._muted_until = 0.0

    def on_player_state(self, speaking: bool, request_id: str | None, now: float) -> None:
        if speaking:
            if not self.speaking:
                self._since = now
            self._seen_at = now
        else:
            self._muted_until = now + self.echo_tail_s
        self.speaking = speaking
        self.player_request = request_id if speaking else None

    def extend(self, now: float) -> None:
        """Something loud just ended (the stop word): the room may still ring with it."""
        self._muted_until = max(self._muted_until, now + self.echo_tail_s)

    def stopped(self) -> None:
        """The answer was cancelled: do not act on "speaking" again before the player says it is idle."""
        self.speaking = False

    def muted(self, now: float) -> bool:
        """Whether the microphone must not listen now. Listens again by itself when the player stops confirming that
        it speaks, or after ``max_mute_s``."""
        if self.speaking:
            silent = now - self._seen_at > self.speaking_expiry_s
            if silent or now - self._since > self.max_mute_s:
                log.warning("interpreter: %s; listening again", "the player stopped confirming that it speaks"
                            if silent else f"muted for {self.max_mute_s:.0f} s without a break")
                self.speaking, self.player_request = False, None
        return self.speaking or now < self._muted_until
