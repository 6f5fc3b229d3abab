"""When the device must say sorry in its own voice: the cloud cannot, when the cloud is what failed.

``ApologyWatch`` is pure (time is passed in, a clip name comes out), like ``PlaybackQueue``. It follows only the
device's newest request (a newer one supersedes everything older), so it holds a handful of fields however long the
device runs. A clip is due when:

* the interpreter sent a completed transcript (``expect``) and, within ``no_answer_s``, no audio and no event for it
  arrived (the cloud is unreachable, the Lambda is dead);
* a turn reported an ``error`` and, within ``error_wait_s``, no audio for it arrived (Polly is down, so the chat's
  spoken apology never became sound);
* the interpreter says it could not hear the person (the recognizer failed) or that the device is offline: at once.

At most one clip per request, and never while answer audio plays or is about to (the loop asks only when idle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voicebot.request_ids import is_newer

Clip = Literal["trouble", "offline"]


@dataclass
class _Watched:
    request_id: str
    no_answer_at: float | None = None  # a clip is due then unless the answer showed up
    error_at: float | None = None  # a clip is due then unless audio for the request arrived
    now: Clip | None = None  # due at once
    done: bool = False  # a clip played, or the answer is being heard: nothing more for this request


class ApologyWatch:
    def __init__(self, *, no_answer_s: float = 10.0, error_wait_s: float = 2.0, enabled: bool = True) -> None:
        self.no_answer_s = no_answer_s
        self.error_wait_s = error_wait_s
        self.enabled = enabled
        self._watched: _Watched | None = None

    def _for(self, request_id: str) -> _Watched | None:
        """The watch of ``request_id``, started if it is newer than the one watched; None for an older request."""
        w = self._watched
        if w is not None and w.request_id == request_id:
            return w
        if w is not None and not is_newer(request_id, w.request_id):
            return None
        self._watched = _Watched(request_id)
        return self._watched

    def _current(self, request_id: str | None) -> _Watched | None:
        w = self._watched
        return w if w is not None and request_id is not None and w.request_id == request_id else None

    # -- what happened -----------------------------------------------------------------------------------------------

    def expect(self, request_id: str, now: float, *, offline: bool = False) -> None:
        """A completed transcript for ``request_id`` went out: an answer should follow."""
        if (watched := self._for(request_id)) is None:
            return
        if offline:
            watched.now = "offline"
        elif watched.no_answer_at is None:
            watched.no_answer_at = now + self.no_answer_s

    def failed(self, request_id: str, now: float, clip: Clip = "trouble") -> None:
        """The device itself could not take the question (the recognizer failed): say so now."""
        if (watched := self._for(request_id)) is not None:
            watched.now = clip

    def heard_of(self, request_id: str | None, now: float) -> None:
        """Something about the request came back from the cloud (an event): it is alive."""
        if (w := self._current(request_id)) is not None:
            w.no_answer_at = None

    def error(self, request_id: str | None, now: float) -> None:
        """A turn reported an error: unless audio for it follows shortly (the chat's own apology), play a clip."""
        if request_id is None or (watched := self._for(request_id)) is None:
            return
        watched.no_answer_at = None
        if watched.error_at is None:
            watched.error_at = now + self.error_wait_s

    def audio(self, request_id: str, now: float) -> None:
        """Audio for the request arrived: the person hears the answer or the cloud's apology."""
        if (watched := self._for(request_id)) is not None:
            watched.no_answer_at = watched.error_at = watched.now = None

    def forget(self, request_id: str | None) -> None:
        """The request was withdrawn or cancelled: nobody waits for its answer."""
        if request_id is None or self._current(request_id) is not None:
            self._watched = None

    # -- what to do --------------------------------------------------------------------------------------------------

    def due(self, now: float) -> Clip | None:
        """The clip to play now, if any (asked by the loop only while nothing plays). Once per request."""
        w = self._watched
        if w is None or w.done or not self.enabled:
            return None
        clip: Clip | None = w.now
        if clip is None and any(at is not None and now >= at for at in (w.no_answer_at, w.error_at)):
            clip = "trouble"
        if clip is not None:
            w.done = True
        return clip

    def wake_at(self) -> float | None:
        w = self._watched
        if w is None or w.done or not self.enabled:
            return None
        times = [t for t in (w.no_answer_at, w.error_at) if t is not None]
        return min(times) if times else None

    @property
    def request_id(self) -> str | None:
        return self._watched.request_id if self._watched else None
