"""How a device component runs and ends, in one place for the Greengrass entry and the ``voicebot`` command.

A component runs until SIGINT/SIGTERM (exit 0, within 2 s whatever it was doing). It ends with ``EXIT_UNHEALTHY``
when it cannot do its job: no microphone or speaker for ``DEVICE_WAIT_S``, a recognizer that failed every utterance
for ``SttGiveUp`` (see the interpreter), the connection lost for good (Greengrass IPC closed, or the MQTT session
taken over by a second process with the same thing name). Before that it publishes an ``error`` event naming the
cause. Greengrass then shows the component ERRORED and restarts it (after three failed restarts in a row: BROKEN, until
the next deployment), which is what a person watching the fleet needs to see, instead of a RUNNING component that does
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from voicebot.messaging import Transport, send
from voicebot.protocol import QOS_AT_LEAST_ONCE, EventMessage, Topics, encode

log = logging.getLogger(__name__)

#: Exit code of a component that cannot do its job (Greengrass restarts it).
EXIT_UNHEALTHY = 4
#: How long a missing microphone or speaker is waited for (a USB card enumerating late, a device replugged).
DEVICE_WAIT_S = 60.0


class ComponentFailed(RuntimeError):
    """The component cannot do its job; the message names the cause (it goes out as an ``error`` event)."""


async def report_failure(transport: Transport, topics: Topics, source: str, detail: str, *, wait_s: float = 1.5) -> None:
    """Publish one ``error`` event naming why the component stops, waiting briefly for it to go out."""
    event = EventMessage(source=source, type="error", detail=detail)
    try:
        await send(transport, topics.event, encode(event), QOS_AT_LEAST_ONCE, wait_s=wait_s)
    except Exception as exc:  # the broker is what failed, perhaps: the log line is all that is left
        log.error("%s: the error event could not be published (%s)", source, str(exc) or type(exc).__name__)


async def serve(run: Callable[[asyncio.Event], Awaitable[None]], transport: Transport, topics: Topics,
                source: str) -> int:
    """Run ``run(stop)`` until a signal (0), a lost connection or ``ComponentFailed`` (``EXIT_UNHEALTHY``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Greengrass stops components with SIGTERM
        loop.add_signal_handler(sig, stop.set)
    lost: list[str] = []

    def on_lost(reason: str) -> None:  # (an SDK thread)
        def stop_for_good() -> None:
            lost.append(reason)
            stop.set()

        loop.call_soon_threadsafe(stop_for_good)

    if hasattr(transport, "on_lost"):
        transport.on_lost(on_lost)
    try:
        await run(stop)
    except ComponentFailed as exc:
        log.error("%s cannot go on: %s; exiting so that Greengrass restarts it", source, exc)
        await report_failure(transport, topics, source, f"{source} stopped: {exc}")
        return EXIT_UNHEALTHY
    if lost:
        log.error("%s: exiting, its connection is gone for good (said above)", source)
        return EXIT_UNHEALTHY
    return 0


async def open_device(open_it: Callable[[], Any], what: str, stop: asyncio.Event, *,
                      report: Callable[[str], Awaitable[None]] | None = None, give_up_s: float = DEVICE_WAIT_S,
                      retry_s: float = 5.0) -> Any:
    """Open an audio device, retrying while it is missing (unplugged, busy, a USB card not enumerated yet). The first
    failure is one log line and one ``report``; after ``give_up_s`` it raises ``ComponentFailed`` naming the device.
    Returns None when ``stop`` is set meanwhile (Ctrl-C, SIGTERM)."""
    from voicebot.edge.audio import AudioError

    loop = asyncio.get_running_loop()
    started = loop.time()
    tries = 0
    while not stop.is_set():
        try:
            device = await asyncio.to_thread(open_it)
        except (AudioError, OSError) as exc:
            tries += 1
            if tries == 1:
                line = f"{what} is not available: {exc}"
                log.error("%s (retrying every %.0f s for %.0f s; `voicebot devices` lists the names)", line, retry_s,
                          give_up_s)
                if report is not None:
                    await report(line)
            if loop.time() - started >= give_up_s:
                raise ComponentFailed(f"{what} is not available after {give_up_s:.0f} s: {exc}") from exc
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_s)  # the next try, or stop at once
            continue
        if tries:
            log.info("%s is available now", what)
        return device
    return None
