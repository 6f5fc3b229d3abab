"""The two device components as Greengrass runs them: one process each, started by the recipe's Run script.

Settings that need a restart (topic root, audio device, STT backend) are interpolated into the Run script, so a
deployment that changes them restarts the component. Settings that are safe to change live (volume, gap timeout, VAD,
echo tail, stop word) are read through IPC ``get_configuration`` and re-read on every configuration update.

For development and the lifecycle test, ``VOICEBOT_BROKER=mqtt://HOST:PORT`` points the transport at a plain broker
instead of IPC; the live settings then keep their recipe defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from voicebot.edge.runner import EXIT_UNHEALTHY, open_device, report_failure, serve
from voicebot.edge.settings import InterpreterConfig, PlayerConfig
from voicebot.messaging import ConnectionSettings, IpcTransport, Transport, TransportError, connect
from voicebot.protocol import DEFAULT_TOPIC_ROOT, Topics

log = logging.getLogger(__name__)

Config = Mapping[str, Any]


class ComponentConfig:
    """The component's configuration from the nucleus, with a change feed. Without IPC: fixed defaults."""

    def __init__(self, client: Any = None, *, defaults: Config | None = None) -> None:
        self.client = client
        self.defaults = dict(defaults or {})
        self._operation: Any = None

    def load(self) -> dict[str, Any]:
        if self.client is None:
            return dict(self.defaults)
        response = self.client.get_configuration(key_path=[])
        return {**self.defaults, **(response.value or {})}

    def watch(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[dict[str, Any]], None]) -> None:
        if self.client is None:
            return

        async def reload() -> None:
            try:
                config = await asyncio.to_thread(self.load)  # an IPC round trip: not on the loop
            except Exception as exc:
                log.error("configuration could not be read after an update (%s); keeping the current one", exc)
                return
            on_change(config)

        def changed(event: Any) -> None:  # SDK thread: the event names the key, not the value; re-read it
            keys = event.configuration_update_event.key_path if event.configuration_update_event else []
            log.info("configuration changed: %s", "/".join(keys or []))
            future = asyncio.run_coroutine_threadsafe(reload(), loop)
            future.add_done_callback(_log_failure)  # nothing a reload does wrong may vanish

        def failed(exc: Exception) -> bool:
            log.error("configuration update stream error (%s); live settings may lag until the next change", exc)
            return False  # keep the stream open

        _, self._operation = self.client.subscribe_to_configuration_update(key_path=[], on_stream_event=changed,
                                                                           on_stream_error=failed)

    def close(self) -> None:
        if self._operation is not None:
            with contextlib.suppress(Exception):
                self._operation.close()
            self._operation = None


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        exc = future.exception()
        log.error("configuration update failed", exc_info=(type(exc), exc, exc.__traceback__))


def _transport(component: str, thing: str) -> tuple[Transport, ComponentConfig]:
    broker = os.environ.get("VOICEBOT_BROKER")
    if broker:
        log.info("%s: using the broker at %s instead of Greengrass IPC", component, broker)
    settings = ConnectionSettings(broker=broker) if broker else ConnectionSettings(ipc=True)
    transport = connect(settings, client_id=f"voicebot-{component}-{thing}", wait_forever=True)
    return transport, ComponentConfig(transport.client if isinstance(transport, IpcTransport) else None)


async def _configured(component: Any, config: ComponentConfig, stop: asyncio.Event) -> None:
    """Apply the component's configuration, follow its updates, run until ``stop``."""
    loop = asyncio.get_running_loop()
    component.apply_config(await asyncio.to_thread(config.load))
    config.watch(loop, component.apply_config)
    try:
        await component.run(stop)
    finally:
        config.close()


def run_component(kind: str, argv: list[str] | None = None) -> int:
    """Entry point of ``components/voice-player/main.py`` and ``components/voice-interpreter/main.py``.

    The recipe passes its configuration as environment variables (``Setenv``), so any value, spaces and brackets
    included, arrives as it was written; flags given on the command line win (development). Exit codes: 0 stopped,
    3 a missing native library (no restart fixes it), 4 cannot do its job (edge/runner.py; Greengrass restarts it).
    """
    env = os.environ.get
    player, interpreter = PlayerConfig.defaults(), InterpreterConfig.defaults()  # the defaults, as the recipes write them
    parser = argparse.ArgumentParser(prog=f"voicebot-{kind}")
    parser.add_argument("--thing", required=True)
    parser.add_argument("--topic-root", default=env("VOICEBOT_TOPIC_ROOT") or DEFAULT_TOPIC_ROOT)
    if kind == "player":
        parser.add_argument("--sink", default=env("VOICEBOT_SINK") or player.sink)
    else:
        parser.add_argument("--source", default=env("VOICEBOT_SOURCE") or interpreter.source)
        parser.add_argument("--stt", default=env("VOICEBOT_STT") or interpreter.stt, choices=["transcribe", "vosk"])
        parser.add_argument("--region", default=env("VOICEBOT_REGION") or env("AWS_REGION") or interpreter.region)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Greengrass stops a component with SIGTERM, also while it waits for the broker: exit cleanly, not as "killed".
    # (The asyncio loop installs its own handler once it runs.)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    topics = Topics(args.topic_root, args.thing)
    stt = None
    if kind == "interpreter":
        from voicebot.edge.stt import SttError, open_stt
        from voicebot.request_ids import default_state_file, keep_request_ids_in

        keep_request_ids_in(default_state_file(args.thing))
        try:
            stt = open_stt(args.stt, region=args.region)
        except SttError as exc:  # a missing native library (libatomic1 for Vosk): no restart will fix it
            log.error("%s", exc)
            return 3
    try:
        transport, config = _transport(kind, args.thing)  # first: a missing device is reported as an event
    except TransportError as exc:
        log.error("%s cannot start: %s", kind, exc)
        return EXIT_UNHEALTHY

    async def report(line: str) -> None:
        await report_failure(transport, topics, kind, line)

    async def main(stop: asyncio.Event) -> None:
        if kind == "player":
            from voicebot.edge.audio import open_sink
            from voicebot.edge.clips import load_clips
            from voicebot.edge.player import Player

            sink = await open_device(lambda: open_sink(args.sink), f"audio output {args.sink!r}", stop, report=report)
            if sink is None:
                return
            clips = load_clips()  # from the artifact (VOICEBOT_CLIPS, set by the recipe)
            try:
                await _configured(Player(transport, topics, sink, reopen=lambda: open_sink(args.sink), clips=clips),
                                  config, stop)
            finally:
                sink.close()
        else:
            from voicebot.edge.audio import open_source
            from voicebot.edge.interpreter import Interpreter

            source = await open_device(lambda: open_source(args.source), f"audio input {args.source!r}", stop,
                                       report=report)
            if source is not None:
                await _configured(Interpreter(transport, topics, source, stt), config, stop)

    try:
        return asyncio.run(serve(main, transport, topics, kind))
    finally:
        transport.close()
