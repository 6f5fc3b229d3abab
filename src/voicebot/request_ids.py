"""Request ids: UUIDv7 strings, sortable by the time they were made, so "newer" needs no shared clock; and how far a
time inside an id is trusted (a device's clock may be wrong, a stranger's id may be forged)."""

from __future__ import annotations

import os
import re
import threading
import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_id_lock = threading.Lock()
_id_last = (0, 0)  # (ms, counter) of the last id made in this process


def new_request_id() -> str:
    """A UUIDv7 string (RFC 9562): random, but sortable by creation time, so a greater requestId is a newer utterance.

    Within one millisecond a 12-bit counter keeps ids made by this process strictly increasing.
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
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
#: How far ahead of this clock a request id's time may be and still count as a time (clocks of devices drift; an id
#: an hour ahead is a broken clock or a forgery, and must not make every later request look older).
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


def carries_time(request_id: str, *, now: int | None = None) -> bool:
    """A UUIDv7 id whose time is not implausibly far in the future: only such ids are ordered by time."""
    ms = request_id_time(request_id)
    return ms is not None and ms <= (now_ms() if now is None else now) + CLOCK_SKEW_MS


def known_newer(request_id: str, than: str) -> bool:
    """True only when both ids carry a sane time (UUIDv7, not from the future) and ``request_id`` is the later one."""
    return carries_time(request_id) and carries_time(than) and request_id > than


def is_newer(request_id: str, than: str | None) -> bool:
    """Whether ``request_id`` supersedes ``than``.

    UUIDv7 ids (what the interpreter makes) compare by the time inside them, so a late message of an older request
    can never cut off a newer one. Any other id (typed in a console, say), and an id from the future (see
    ``CLOCK_SKEW_MS``), counts as newer when it arrives and is superseded by whatever comes next.
    """
    if than is None or request_id == than:
        return request_id != than
    if carries_time(request_id) and carries_time(than):
        return request_id > than
    return True
