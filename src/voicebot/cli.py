"""The ``voicebot`` command: turns flags into settings and starts one coordinating object per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from voicebot.edge.audio import AudioError
from voicebot.edge.settings import InterpreterConfig, PlayerConfig
from voicebot.messaging import ConnectionSettings, TransportError
from voicebot.protocol import DEFAULT_TOPIC_ROOT, Topics

log = logging.getLogger("voicebot")


def _connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--broker", help="plain MQTT5 broker, mqtt://HOST:PORT (a local mosquitto)")
    g.add_argument("--endpoint", help="AWS IoT Core data endpoint (mTLS)")
    g.add_argument("--cert", help="device certificate PEM (with --endpoint)")
    g.add_argument("--key", help="private key PEM (with --endpoint)")
    g.add_argument("--ca", help="root CA PEM (with --endpoint)")
    g.add_argument("--ipc", action="store_true", help="use Greengrass IPC (inside a Greengrass component)")
    g.add_argument("--thing", default="dev-device", help="thing name (the device's identity in every topic)")
    g.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, help="first level of every topic (default voicebot)")


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    if not (args.broker or args.endpoint or args.ipc):
        raise SystemExit("give --broker mqtt://HOST:PORT, --endpoint HOST --cert PEM --key PEM, or --ipc")
    return ConnectionSettings(broker=args.broker, endpoint=args.endpoint, cert=args.cert, key=args.key, ca=args.ca,
                              ipc=args.ipc)


PLAYER, INTERPRETER = PlayerConfig.defaults(), InterpreterConfig.defaults()  # one place for every default (the recipes' too)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="Korean voice-to-voice assistant for Greengrass devices")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="one full voice turn on the embedded local stack")
    src = demo.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the question, as if transcribed")
    src.add_argument("--audio", type=Path, help="a WAV file with the spoken question (recognised with Vosk)")
    demo.add_argument("--out", type=Path, default=Path("out"), help="where reply.wav and history go (default out/)")
    demo.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    demo.add_argument("--llm", default="auto", choices=["auto", "bedrock", "llamacpp", "loopback"])
    demo.add_argument("--thing", default="demo-device")
    demo.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT)

    player = sub.add_parser("player", help="run the voice-player component (dev mode)")
    _connection_flags(player)
    player.add_argument("--sink", default="device", help="device[:NAME] | wav:PATH | null")
    player.add_argument("--gap-timeout", type=float, default=PLAYER.gap_timeout_s,
                        help="seconds to wait for a missing sentence")
    player.add_argument("--volume", type=float, default=PLAYER.volume)
    player.add_argument("--realtime", action="store_true",
                        help="a wav: sink takes as long as a speaker would (the echo guard and the timing behave as on "
                             "a device)")

    interp = sub.add_parser("interpreter", help="run the voice-interpreter component (dev mode)")
    _connection_flags(interp)
    interp.add_argument("--source", default="mic", help="mic[:NAME] | wav:PATH (a WAV ends the run when done)")
    interp.add_argument("--stt", default=INTERPRETER.stt, choices=["vosk", "transcribe", "none"],
                        help="transcribe (as on the device; needs AWS credentials), vosk (offline), or none: VAD "
                             "only, no recognizer (to measure the interpreter itself)")
    interp.add_argument("--region", default=INTERPRETER.region, help="AWS region of Amazon Transcribe")
    interp.add_argument("--vad", default=INTERPRETER.vad_engine, choices=["webrtc", "silero"],
                        help="voice activity detector")
    interp.add_argument("--vad-aggressiveness", type=int, default=INTERPRETER.vad_aggressiveness, choices=[0, 1, 2, 3])
    interp.add_argument("--preroll-ms", type=int, default=INTERPRETER.preroll_ms)
    interp.add_argument("--hangover-ms", type=int, default=INTERPRETER.hangover_ms)
    interp.add_argument("--max-utterance-s", type=float, default=INTERPRETER.max_utterance_s)
    interp.add_argument("--early-end-ms", type=int, default=INTERPRETER.early_end_ms,
                        help="silence that ends a turn whose words sound finished (0: always the hangover)")
    interp.add_argument("--preempt-ms", type=int, default=INTERPRETER.preempt_ms,
                        help="silence after finished-sounding words at which the transcript goes out, before the turn "
                             "has ended (0: at the early end)")
    interp.add_argument("--quiet-margin-db", type=float, default=INTERPRETER.quiet_margin_db,
                        help="for --preempt-ms: frames this close to the room's noise floor count as silence, "
                             "whatever webrtcvad says (0: webrtcvad alone)")
    interp.add_argument("--echo-tail-s", type=float, default=INTERPRETER.echo_tail_s)
    interp.add_argument("--stop-word", default=None, help="enable a stop word heard while speaking (e.g. 그만)")
    interp.add_argument("--realtime", action="store_true",
                        help="a wav: source is read as fast as a microphone would deliver it (partials, the echo "
                             "guard and the stop word behave as on a device)")

    sub.add_parser("devices", help="list audio inputs and outputs with the exact Source/Sink value for each")

    from voicebot.cloud.device_policy import add_arguments

    add_arguments(sub.add_parser("device-policy", help="print the AWS IoT policy of one core device (its own topics "
                                                       "and client ids only)"))

    monitor = sub.add_parser("monitor", help="print every voicebot message as a legible line")
    _connection_flags(monitor)
    monitor.add_argument("--count", type=int, default=0, help="stop after this many messages (0: until Ctrl-C)")

    bench = sub.add_parser("bench", help="latency, gaps, fleet load, footprint and cost, measured on the local stack")
    from voicebot.bench.options import add_arguments

    add_arguments(bench)

    return parser


def _run_until_signal(main) -> None:
    """Run an async component until SIGINT/SIGTERM, then let it clean up."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # the conversation is the output
    from voicebot.cloud.llm import LlmSettings
    from voicebot.local.demo import DemoError, DemoSettings, run_demo

    settings = DemoSettings(out_dir=args.out, thing=args.thing, topic_root=args.topic_root,
                            llm=LlmSettings(backend=args.llm))
    try:
        summary = run_demo(text=args.text, audio=args.audio, settings=settings,
                           echo=(lambda s: print(s, file=sys.stderr)) if args.json else print)
    except DemoError as exc:
        print(f"voicebot demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0


def _run_component(run, transport, topics: Topics, source: str) -> int:
    """A device component until SIGINT/SIGTERM (0) or until it cannot go on (4); see edge/runner.py."""
    from voicebot.edge.runner import serve

    return asyncio.run(serve(run, transport, topics, source))


def cmd_player(args: argparse.Namespace) -> int:
    from voicebot.edge.audio import open_sink
    from voicebot.edge.clips import load_clips
    from voicebot.edge.player import Player, PlayerSettings
    from voicebot.messaging import connect

    transport = connect(connection_settings(args), client_id=f"voicebot-player-{args.thing}", wait_forever=True)
    topics = Topics(args.topic_root, args.thing)
    try:
        sink = open_sink(args.sink, realtime=args.realtime)
        player = Player(transport, topics, sink, PlayerSettings(gap_timeout_s=args.gap_timeout, volume=args.volume),
                        reopen=lambda: open_sink(args.sink, realtime=args.realtime), clips=load_clips())
        try:
            return _run_component(player.run, transport, topics, "player")
        finally:
            player.sink.close()
    finally:
        transport.close()


def cmd_interpreter(args: argparse.Namespace) -> int:
    from voicebot.edge.audio import open_source
    from voicebot.edge.interpreter import Interpreter, InterpreterSettings
    from voicebot.edge.stt import open_stt
    from voicebot.edge.vad import VadSettings
    from voicebot.messaging import connect
    from voicebot.request_ids import default_state_file, keep_request_ids_in

    settings = InterpreterSettings(
        vad=VadSettings(engine=args.vad, aggressiveness=args.vad_aggressiveness, preroll_ms=args.preroll_ms,
                        hangover_ms=args.hangover_ms, max_utterance_s=args.max_utterance_s,
                        early_end_ms=args.early_end_ms, preempt_ms=args.preempt_ms,
                        quiet_margin_db=args.quiet_margin_db),
        echo_tail_s=args.echo_tail_s, stop_word_enabled=bool(args.stop_word), stop_word=args.stop_word or "그만",
    )
    connection = connection_settings(args)
    keep_request_ids_in(default_state_file(args.thing))  # request order survives a restart after a clock jump
    source = open_source(args.source, frame_ms=settings.vad.frame_ms, realtime=args.realtime)
    stt = open_stt(args.stt, region=args.region)
    transport = connect(connection, client_id=f"voicebot-interpreter-{args.thing}", wait_forever=True)
    topics = Topics(args.topic_root, args.thing)
    interpreter = Interpreter(transport, topics, source, stt, settings)
    try:
        code = _run_component(interpreter.run, transport, topics, "interpreter")
    finally:
        transport.close()
    print(interpreter.summary(), file=sys.stderr)
    for message in interpreter.published:
        if message.state == "completed":
            print(json.dumps({"requestId": message.request_id, "text": message.text}, ensure_ascii=False))
    return code


def cmd_monitor(args: argparse.Namespace) -> int:
    from voicebot.messaging import connect, handoff_to_loop
    from voicebot.monitor import MonitorFormatter
    from voicebot.protocol import everything_filter

    transport = connect(connection_settings(args), client_id=f"voicebot-monitor-{os.getpid()}")
    formatter = MonitorFormatter()
    print(f"watching {everything_filter(args.topic_root)} on {getattr(transport, 'description', 'broker')}",
          file=sys.stderr, flush=True)

    async def run(stop: asyncio.Event) -> None:
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        transport.subscribe(everything_filter(args.topic_root), 1, handoff_to_loop(asyncio.get_running_loop(), inbox))
        print("ready", file=sys.stderr, flush=True)
        seen = 0
        stopper = asyncio.ensure_future(stop.wait())
        while not stop.is_set() and (not args.count or seen < args.count):
            getter = asyncio.ensure_future(inbox.get())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            seen += 1
            for line in formatter.lines(*getter.result()):
                print(line, flush=True)
        stopper.cancel()

    try:
        _run_until_signal(run)
    finally:
        transport.close()
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from voicebot.edge.audio import list_devices

    devices = list_devices()
    for kind, setting, prefix in (("output", "voice-player Sink (--sink)", "device"),
                                  ("input", "voice-interpreter Source (--source)", "mic")):
        print(f"{kind} devices, the value for {setting}:")
        found = [d for d in devices if d.kind == kind]
        for d in found:
            value = f"{prefix}:{d.name}"
            print(f"  {value:<44} {d.channels} ch, {d.sample_rate} Hz" + (", default" if d.default else ""))
        if not found:
            print("  (none found)")
    return 0


def cmd_device_policy(args: argparse.Namespace) -> int:
    from voicebot.cloud.device_policy import PolicyError, policy_json

    try:
        print(policy_json(args))
    except PolicyError as exc:
        print(f"voicebot device-policy: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from voicebot.bench.main import main as bench_main

    logging.getLogger().setLevel(logging.WARNING)  # the table is the output
    return bench_main(args)


COMMANDS = {"bench": cmd_bench, "devices": cmd_devices, "device-policy": cmd_device_policy, "monitor": cmd_monitor,
            "demo": cmd_demo, "player": cmd_player, "interpreter": cmd_interpreter}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a blocking wait (a broker that is down) like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminate)  # (asyncio loops install their own handlers while they run)
    try:
        return COMMANDS[args.command](args)
    except (TransportError, AudioError) as exc:
        print(f"voicebot {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"voicebot {args.command}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
