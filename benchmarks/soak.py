"""Soak: N turns through the whole local stack in one process (rules, chat, speech, player), plus mosquitto, and how
much each process grew. A device runs for months: no process may grow by more than 5 MB over 1,000 turns.

    .venv/bin/python benchmarks/soak.py --turns 1000

Backends are synthetic and instant (the figure is about what voicebot keeps, not about latency); the history is a
SQLite file, as on a laptop. Resident memory is read after a warm-up of 50 turns and at the end, after a GC.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

from voicebot.bench.synthetic import SyntheticTts
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.edge.audio import NullSink
from voicebot.edge.player import Player
from voicebot.local.broker import MosquittoBroker
from voicebot.local.cloud import LocalCloud
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import QOS_AT_LEAST_ONCE, Topics, TranscriptMessage, encode, new_request_id

LIMIT_MB = 5.0
WARMUP = 50


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 1e6


async def soak(turns: int, folder: Path) -> dict[str, float]:
    topics = Topics("voicebot", "soak-pi")
    with MosquittoBroker() as broker:
        # the product's offline responder with a fixed answer (the benchmark's model records every call: not here)
        model = LoopbackChatModel(answer="첫 번째 문장이에요. 두 번째 문장이에요. 세 번째 문장이에요.")
        tts = SyntheticTts(base_s=0.0, per_char_s=0.0, audio_s_per_char=0.001)
        with LocalCloud(broker.url, model=model, history=SqliteHistory(folder / "history.sqlite"), tts=tts,
                        topic_root=topics.root) as _cloud:
            finished: asyncio.Queue[str] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def on_event(event) -> None:
                if event.type == "played" and event.seq is None and event.request_id:
                    loop.call_soon_threadsafe(finished.put_nowait, event.request_id)

            settings = ConnectionSettings(broker=broker.url)
            player = Player(Mqtt5Transport(settings, client_id="voicebot-player-soak"), topics,
                            NullSink(realtime=False), on_event=on_event)
            device = Mqtt5Transport(settings, client_id="soak-interpreter")
            stop = asyncio.Event()
            task = asyncio.create_task(player.run(stop))
            await asyncio.wait_for(player.ready.wait(), 10)
            me, mosquitto = psutil.Process(), psutil.Process(broker.pid)
            figures: dict[str, float] = {}
            for i in range(turns + WARMUP):
                if i == WARMUP:
                    gc.collect()
                    figures["voicebot_start_mb"], figures["mosquitto_start_mb"] = rss_mb(me), rss_mb(mosquitto)
                    started = time.monotonic()
                message = TranscriptMessage(request_id=new_request_id(), state="completed", text=f"질문 {i}")
                await asyncio.to_thread(lambda m=message: device.publish(topics.transcript, encode(m),
                                                                         QOS_AT_LEAST_ONCE).result(10))
                while await asyncio.wait_for(finished.get(), 30) != message.request_id:
                    pass
            gc.collect()
            figures["voicebot_end_mb"], figures["mosquitto_end_mb"] = rss_mb(me), rss_mb(mosquitto)
            figures["turns_per_s"] = turns / (time.monotonic() - started)
            stop.set()
            await task
            device.close()
    figures["voicebot_growth_mb"] = figures["voicebot_end_mb"] - figures["voicebot_start_mb"]
    figures["mosquitto_growth_mb"] = figures["mosquitto_end_mb"] - figures["mosquitto_start_mb"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voicebot-soak-") as tmp:
        figures = asyncio.run(soak(args.turns, Path(tmp)))
    print(f"{args.turns} turns ({figures['turns_per_s']:.1f}/s): voicebot {figures['voicebot_start_mb']:.1f} -> "
          f"{figures['voicebot_end_mb']:.1f} MB ({figures['voicebot_growth_mb']:+.1f}), mosquitto "
          f"{figures['mosquitto_start_mb']:.1f} -> {figures['mosquitto_end_mb']:.1f} MB "
          f"({figures['mosquitto_growth_mb']:+.1f}); limit {LIMIT_MB:+.1f} MB each")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["voicebot_growth_mb"] <= LIMIT_MB and figures["mosquitto_growth_mb"] <= LIMIT_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
