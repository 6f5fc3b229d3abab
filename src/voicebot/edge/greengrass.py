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
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from voicebot.edge.transport import ConnectionSettings, IpcTransport, Transport, connect
from voicebot.protocol import DEFAULT_TOPIC_ROOT, Topics

log = logging.getLogger(__name__)

Config = Mapping[str, Any]


class ComponentConfig:
    """The component's configuration from the nucleus, with a change feed. Without IPC: fixed defaults."""

    def __init__(self, client: Any = None, *, defaults: Config | None = None) -> None:
        self.client = client
        self.defaults = dict(defaults or {})

    def load(self) -> dict[str, Any]:
        if self.client is None:
            return dict(self.defaults)
        response = self.client.get_configuration(key_path=[])
        return {**self.defaults, **(response.value or {})}

    def watch(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[dict[str, Any]], None]) -> None:
        if self.client is None:
            return

        def changed(event: Any) -> None:  # SDK thread: the event names the key, not the value; re-read in the loop
            keys = event.configuration_update_event.key_path if event.configuration_update_event else []
            log.info("configuration changed: %s", "/".join(keys or []))
            loop.call_soon_threadsafe(lambda: on_change(self.load()))

        self.client.subscribe_to_configuration_update(key_path=[], on_stream_event=changed)


def number(config: Config, key: str, default: float) -> float:
    """Greengrass stores numbers as strings ("0.8"); a bad value keeps the default with one log line."""
    value = config.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        log.warning("configuration %s=%r is not a number; using %s", key, value, default)
        return default


def _transport(component: str, thing: str) -> tuple[Transport, ComponentConfig]:
    broker = os.environ.get("VOICEBOT_BROKER")
    if broker:
        log.info("%s: using the broker at %s instead of Greengrass IPC", component, broker)
    settings = ConnectionSettings(broker=broker) if broker else ConnectionSettings(ipc=True)
    transport = connect(settings, client_id=f"voicebot-{component}-{thing}", wait_forever=True)
    return transport, ComponentConfig(transport.client if isinstance(transport, IpcTransport) else None)


async def _serve(make: Callable[[Transport], Any], transport: Transport, config: ComponentConfig) -> None:
    component = make(transport)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Greengrass stops components with SIGTERM
        loop.add_signal_handler(sig, stop.set)
    component.apply_config(config.load())
    config.watch(loop, component.apply_config)
    await component.run(stop)


def run_component(kind: str, argv: list[str] | None = None) -> int:
    """Entry point of ``components/voice-player/main.py`` and ``components/voice-interpreter/main.py``."""
    parser = argparse.ArgumentParser(prog=f"voicebot-{kind}")
    parser.add_argument("--thing", required=True)
    parser.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT)
    if kind == "player":
        parser.add_argument("--sink", default="device")
    else:
        parser.add_argument("--source", default="mic")
        parser.add_argument("--stt", default="transcribe", choices=["transcribe", "vosk"])
        parser.add_argument("--region", default=os.environ.get("AWS_REGION", "ap-northeast-2"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    topics = Topics(args.topic_root, args.thing)
    transport, config = _transport(kind, args.thing)
    try:
        if kind == "player":
            from voicebot.edge.audio import open_sink
            from voicebot.edge.player import Player

            sink = open_sink(args.sink)
            try:
                asyncio.run(_serve(lambda t: Player(t, topics, sink), transport, config))
            finally:
                sink.close()
        else:
            from voicebot.edge.audio import open_source
            from voicebot.edge.interpreter import Interpreter
            from voicebot.edge.stt import open_stt

            source = open_source(args.source)
            stt = open_stt(args.stt, region=args.region)
            asyncio.run(_serve(lambda t: Interpreter(t, topics, source, stt), transport, config))
    finally:
        transport.close()
    return 0
