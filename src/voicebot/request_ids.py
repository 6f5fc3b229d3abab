"""Request ids: UUIDv7 strings, sortable by the time they were made, so "newer" needs no shared clock; and how
"newer" survives a device clock that is wrong or jumps (a Raspberry Pi has no clock battery: it boots with a stale
time and NTP moves it later, back or forward).

Ordering is decided here, once, for the chat, the history stores and the player:

* A device's ids never go backwards. Within a process the id's time is ``max(clock, last + 1 counter step)``, so a
  clock set back by NTP continues from the last id; across restarts a high-water mark kept in a state file
  (``keep_request_ids_in``) does the same. The time inside an id is the device's order first, the time second.
* Two UUIDv7 ids compare as strings (time first). One exception, for a device that lost its state file after its
  clock had been far ahead: when the newest id seen is more than ``CLOCK_SKEW_MS`` ahead of the receiver's clock and
  the new one is not, the new one is newer (the device's clock was corrected and its order restarted).
* Any other id (typed in a console) counts as newer when it arrives.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_id_lock = threading.Lock()
_id_last = (0, 0)  # (ms, counter) of the last id made in this process
_state_path: Path | None = None  # where the high-water mark is kept across restarts (device components only)
_state_mark = 0  # no id of this process has a time above this mark without it being saved first
#: The mark is saved this far ahead of the id's time: one small write a minute at most, and after a restart ids
#: continue at most this much ahead of the clock (well inside CLOCK_SKEW_MS).
STATE_AHEAD_MS = 60_000


def default_state_file(thing: str) -> Path:
    """Where a device's interpreter keeps its order: ``VOICEBOT_STATE_DIR`` (the recipe sets the component's work
    folder), else the user's state folder."""
    base = os.environ.get("VOICEBOT_STATE_DIR") or os.environ.get("XDG_STATE_HOME") or \
        str(Path.home() / ".local" / "state" / "voicebot")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", thing)[:128]
    return Path(base) / f"request-ids-{safe}"


def keep_request_ids_in(path: str | Path) -> None:
    """Make this process's ids continue above the mark saved in ``path`` (and keep saving it there), so that a
    restart after the clock was set back never makes ids that look older than the ones already sent."""
    global _state_path, _state_mark, _id_last
    path = Path(path)
    try:
        mark = int(path.read_text().strip() or 0)
    except FileNotFoundError:
        mark = 0
    except (OSError, ValueError) as exc:
        log.warning("request id state %s unreadable (%s); starting from the clock", path, exc)
        mark = 0
    with _id_lock:
        _state_path, _state_mark = path, mark
        if mark > _id_last[0]:
            _id_last = (mark, 0)


def _save_mark(ms: int) -> None:
    global _state_mark
    if _state_path is None or ms <= _state_mark:
        return
    mark = ms + STATE_AHEAD_MS
    try:
        _state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _state_path.with_suffix(".tmp")
        tmp.write_text(str(mark))
        os.replace(tmp, _state_path)  # atomic: a power cut leaves the old mark or the new one
        _state_mark = mark
    except OSError as exc:  # a read-only or full disk: ids still increase within this process
        log.warning("request id state %s not saved: %s", _state_path, exc)
        _state_mark = mark  # (tried once per minute of ids, not per id)


def new_request_id() -> str:
    """A UUIDv7 string (RFC 9562): random, but sortable by creation time, so a greater requestId is a newer utterance.

    Within one millisecond a 12-bit counter keeps ids made by this process strictly increasing, and a clock set back
    continues from the last id (see the module's text).
    """
    global _id_last
    with _id_lock:
        ms = now_ms()
        last_ms, counter = _id_last
        if ms <= last_ms:
            ms, counter = (last_ms, counter + 1) if counter < 0xFFF else (last_ms + 1, 0)
        else:
            counter = 0
        _id_last = (ms, counter)
        _save_mark(ms)
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
#: How far ahead of the receiver's clock an id's time may be and still be plausible (clocks of devices drift). Only
#: used to let a device whose order restarted after its clock was far ahead be heard again (see the module's text).
CLOCK_SKEW_MS = 5 * 60_000


def request_id_time(request_id: str) -> int | None:
    """The creation time (epoch ms) inside a UUIDv7 request id, or None for any other id."""
    if not _UUID7.match(request_id):
        return None
    return int(request_id[:8] + request_id[9:13], 16)


def first_id_after(ms: int) -> str:
    """The UUIDv7 string every id made after ``ms`` sorts above (for range conditions in a store)."""
    h = f"{ms + 1:012x}"
    return f"{h[:8]}-{h[8:]}-7000-8000-000000000000"


def horizon_id(now: int | None = None) -> str:
    """Ids above this one are implausibly far in the future for this receiver's clock."""
    return first_id_after((now_ms() if now is None else now) + CLOCK_SKEW_MS)


def is_newer(request_id: str, than: str | None, *, now: int | None = None) -> bool:
    """Whether ``request_id`` supersedes ``than`` (the rule every store and the player follow; see the module)."""
    if than is None or request_id == than:
        return request_id != than
    if request_id_time(request_id) is None or request_id_time(than) is None:
        return True  # no order: arrival decides
    if request_id > than:
        return True
    horizon = horizon_id(now)
    return than > horizon >= request_id  # the device's order restarted after its clock was far ahead
