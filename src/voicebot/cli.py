"""The ``voicebot`` command: turns flags into settings and starts one coordinating object per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from voicebot.edge.audio import AudioError
from voicebot.edge.settings import InterpreterConfig, PlayerConfig
from voicebot.messaging import ConnectionSettings, TransportError
from voicebot.protocol import DEFAULT_TOPIC_ROOT, Topics

log = logging.getLogger("voicebot")


class Parser(argparse.ArgumentParser):
    """argparse with the errors a person can act on: a bad value is one line naming the flag and what is allowed; a
    missing or unknown flag also shows this (sub)command's usage. Exit code 2 either way."""

    def error(self, message: str) -> NoReturn:
        if message.startswith(("unrecognized arguments", "the following arguments are required", "one of the")):
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default in its help line (only where there is one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def setting(model: type, name: str) -> Callable[[str], Any]:
    """An argparse type that checks a value against the settings model's own field (one source of bounds for the
    recipes, the live configuration and the command line)."""
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError

    field = model.model_fields[name]
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {exc.errors()[0]['msg']}") from None

    parse.__name__ = name  # (argparse names the type in some messages)
    return parse


def thing_name(text: str) -> str:
    from voicebot.protocol import THING_NAME_RULE, ProtocolError, check_thing_name

    try:
        return check_thing_name(text)
    except ProtocolError:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {THING_NAME_RULE}") from None


def _verbose_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the subcommand it sets the same value; not given, it leaves the top-level one alone.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")


def _connection_flags(p: argparse.ArgumentParser, *, thing_default: str | None = "dev-device",
                      thing: bool = True) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--broker", help="plain MQTT5 broker, mqtt://HOST:PORT (a local mosquitto)")
    g.add_argument("--endpoint", help="AWS IoT Core data endpoint (mTLS), instead of --broker")
    g.add_argument("--cert", help="device certificate PEM (with --endpoint)")
    g.add_argument("--key", help="private key PEM (with --endpoint)")
    g.add_argument("--ca", help="root CA PEM (with --endpoint)")
    g.add_argument("--ipc", action="store_true", help="use Greengrass IPC (inside a Greengrass component)")
    if thing:
        g.add_argument("--thing", default=thing_default, type=thing_name,
                       help="thing name, the device's identity in every topic (AWS IoT rules: letters, digits, : _ -)")
    g.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, type=setting(PlayerConfig, "topic_root"),
                   help="first level of every topic")


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    if not (args.broker or args.endpoint or args.ipc):
        raise SystemExit("give --broker mqtt://HOST:PORT, --endpoint HOST --cert PEM --key PEM, or --ipc")
    return ConnectionSettings(broker=args.broker, endpoint=args.endpoint, cert=args.cert, key=args.key, ca=args.ca,
                              ipc=args.ipc)


PLAYER, INTERPRETER = PlayerConfig.defaults(), InterpreterConfig.defaults()  # one place for every default (the recipes' too)
LLM_HELP = ("chat model: bedrock (needs AWS credentials), llamacpp (a local GGUF: pip install 'voicebot[llamacpp]' and "
            "VOICEBOT_GGUF=/path/model.gguf), loopback (an offline responder that only echoes), or auto: bedrock when "
            "AWS credentials are found, else llamacpp when VOICEBOT_GGUF is set, else loopback")


def _backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm", default="auto", choices=["auto", "bedrock", "llamacpp", "loopback"], help=LLM_HELP)
    p.add_argument("--tts", default="espeak", choices=["espeak", "polly"],
                   help="speech: espeak-ng (offline, synthetic voice) or Amazon Polly Seoyeon (needs AWS credentials)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="voicebot", description="Korean voice-to-voice assistant for Greengrass devices",
                    formatter_class=Help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=Help)
        _verbose_flag(p)
        return p

    demo = command("demo", "one full voice turn on the embedded local stack (its own broker, cloud and player)")
    src = demo.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the question, as if transcribed")
    src.add_argument("--audio", type=Path, help="a WAV file with the spoken question (recognised with Vosk)")
    demo.add_argument("--out", type=Path, default=Path("out"), help="where reply.wav and the history go")
    demo.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    _backend_flags(demo)
    demo.add_argument("--thing", default="demo-device", type=thing_name, help="the demo device's thing name")
    demo.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, type=setting(PlayerConfig, "topic_root"),
                      help="first level of every topic")

    cloud = command("cloud", "the local cloud for dev mode: the rules of cloud/template.yaml with the chat and speech "
                             "handlers and a SQLite history, on a broker")
    cloud.add_argument("--broker", required=True, help="the MQTT5 broker the devices use, mqtt://HOST:PORT")
    cloud.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, type=setting(PlayerConfig, "topic_root"),
                       help="first level of every topic")
    _backend_flags(cloud)
    cloud.add_argument("--history", type=Path, default=Path("out") / "history.sqlite",
                       help="the SQLite file that keeps each device's conversation")
    cloud.add_argument("--template", type=Path, default=None,
                       help="the SAM template whose IoT rules run (default: cloud/template.yaml of this checkout)")

    player = command("player", "run the voice-player component (dev mode)")
    _connection_flags(player)
    player.add_argument("--sink", default=PLAYER.sink, type=setting(PlayerConfig, "sink"),
                        help="device[:NAME] (a speaker; `voicebot devices` lists names), wav:PATH (a file), or null")
    player.add_argument("--gap-timeout", type=setting(PlayerConfig, "gap_timeout_s"), default=PLAYER.gap_timeout_s,
                        help="seconds to wait for a missing sentence before skipping it (0.1-60)")
    player.add_argument("--volume", type=setting(PlayerConfig, "volume"), default=PLAYER.volume,
                        help="0.0 (silent) to 1.0 (as synthesized)")
    player.add_argument("--realtime", action="store_true",
                        help="a wav: sink takes as long as a speaker would (the echo guard and the timing behave as on "
                             "a device; default: written at once)")

    interp = command("interpreter", "run the voice-interpreter component (dev mode)")
    _connection_flags(interp)
    interp.add_argument("--source", default=INTERPRETER.source, type=setting(InterpreterConfig, "source"),
                        help="mic[:NAME] (`voicebot devices` lists names) or wav:PATH (a WAV ends the run when done)")
    interp.add_argument("--stt", default="auto", choices=["auto", "vosk", "transcribe", "none"],
                        help="speech recognition: transcribe (Amazon Transcribe, as on the device; needs AWS "
                             "credentials and a region), vosk (offline), auto (transcribe when AWS credentials are "
                             "found, else vosk), or none (VAD only, to measure the interpreter itself)")
    interp.add_argument("--region", default=INTERPRETER.region, type=setting(InterpreterConfig, "region"),
                        help="AWS region of Amazon Transcribe")
    interp.add_argument("--vad", default=INTERPRETER.vad_engine, choices=["webrtc", "silero"],
                        help="voice activity detector (silero: laptops only, the optional extra)")
    interp.add_argument("--vad-aggressiveness", type=setting(InterpreterConfig, "vad_aggressiveness"),
                        default=INTERPRETER.vad_aggressiveness,
                        help="webrtcvad's aggressiveness, 0 (most speech) to 3 (least)")
    interp.add_argument("--preroll-ms", type=setting(InterpreterConfig, "preroll_ms"), default=INTERPRETER.preroll_ms,
                        help="audio kept from before the voice started, in ms (0-2000)")
    interp.add_argument("--hangover-ms", type=setting(InterpreterConfig, "hangover_ms"),
                        default=INTERPRETER.hangover_ms, help="silence that ends a turn, in ms (100-5000)")
    interp.add_argument("--max-utterance-s", type=setting(InterpreterConfig, "max_utterance_s"),
                        default=INTERPRETER.max_utterance_s, help="longest utterance, in seconds (1-120)")
    interp.add_argument("--barge-in", type=setting(InterpreterConfig, "barge_in"), default=INTERPRETER.barge_in,
                        help="full duplex: echo cancellation with the player's output, so speaking over the device "
                             "stops it (true/false; false: the microphone is muted while it speaks)")
    interp.add_argument("--barge-in-min-ms", type=setting(InterpreterConfig, "barge_in_min_ms"),
                        default=INTERPRETER.barge_in_min_ms,
                        help="the person's voice over the device's needed to stop it, in ms (60-2000)")
    interp.add_argument("--barge-in-echo-margin-db", type=setting(InterpreterConfig, "barge_in_echo_margin_db"),
                        default=INTERPRETER.barge_in_echo_margin_db,
                        help="a frame is the person's when echo cancellation took off less than this, in dB (1-40)")
    interp.add_argument("--barge-in-min-level-dbfs", type=setting(InterpreterConfig, "barge_in_min_level_dbfs"),
                        default=INTERPRETER.barge_in_min_level_dbfs,
                        help="and it is at least this loud after echo cancellation, in dBFS (-70-0)")
    interp.add_argument("--end-of-turn", type=setting(InterpreterConfig, "end_of_turn"),
                        default=INTERPRETER.end_of_turn,
                        help="what may end a turn before the hangover: hangover (nothing), text (the Korean text cue), "
                             "audio (the Smart Turn v3 model), both (text where the words are shown, else the model)")
    interp.add_argument("--turn-model-ms", type=setting(InterpreterConfig, "turn_model_ms"),
                        default=INTERPRETER.turn_model_ms,
                        help="silence after which the audio turn model is asked, in ms (60-2000)")
    interp.add_argument("--early-end-ms", type=setting(InterpreterConfig, "early_end_ms"),
                        default=INTERPRETER.early_end_ms,
                        help="silence that ends a turn whose words sound finished, in ms (0: always the hangover)")
    interp.add_argument("--preempt-ms", type=setting(InterpreterConfig, "preempt_ms"), default=INTERPRETER.preempt_ms,
                        help="silence after finished-sounding words at which the transcript goes out, before the turn "
                             "has ended, in ms (0: at the early end)")
    interp.add_argument("--quiet-margin-db", type=setting(InterpreterConfig, "quiet_margin_db"),
                        default=INTERPRETER.quiet_margin_db,
                        help="for --preempt-ms: frames this close to the room's noise floor count as silence, "
                             "whatever webrtcvad says, in dB (0: webrtcvad alone)")
    interp.add_argument("--echo-tail-s", type=setting(InterpreterConfig, "echo_tail_s"),
                        default=INTERPRETER.echo_tail_s,
                        help="keep the microphone muted this long after the device stops speaking, in seconds (0-5)")
    interp.add_argument("--stop-word", default=None, type=setting(InterpreterConfig, "stop_word"),
                        help="a word that, heard while the device speaks, stops the answer (e.g. 그만; default: none)")
    interp.add_argument("--realtime", action="store_true",
                        help="a wav: source is read as fast as a microphone would deliver it (partials, the echo "
                             "guard and the stop word behave as on a device; default: as fast as possible)")

    command("devices", "list audio inputs and outputs with the exact Source/Sink value for each")

    from voicebot.cloud.device_policy import add_arguments

    add_arguments(command("device-policy", "print the AWS IoT policy of one core device (its own topics and client "
                                           "ids only)"))

    from voicebot.deployment import add_arguments as deployment_arguments

    deploy = command("deployment", "print deploy/deployment.json for another topic root (TopicRoot and a matching "
                                   "accessControl for both components)")
    deployment_arguments(deploy)
    deploy._option_string_actions["--topic-root"].type = setting(PlayerConfig, "topic_root")  # the recipes' rule

    monitor = command("monitor", "print every voicebot message as a legible line")
    _connection_flags(monitor, thing_default=None)  # (None: every device)
    monitor.add_argument("--count", type=int, default=0, help="stop after this many messages (0: until Ctrl-C)")

    console = command("console", "the conversation console: every device's conversation live in a browser (a local "
                                 "web page; the read-only `device-policy --monitor` certificate is enough)")
    _connection_flags(console, thing=False)
    console.add_argument("--port", type=int, default=8080, help="the page's port")
    console.add_argument("--host", default="127.0.0.1",
                         help="the address to listen on (127.0.0.1: this machine only; the page has no login)")
    console.add_argument("--allow-ask", action="store_true",
                         help="a text box per device that publishes a completed transcript as that device (off: the "
                              "page only watches)")

    bench = command("bench", "latency, gaps, fleet load, footprint and cost, measured on the local stack")
    from voicebot.bench.options import add_arguments

    add_arguments(bench)

    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but an unknown flag is reported with the subcommand's usage, not the top-level one."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


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
    from voicebot.cloud.llm import BackendError, LlmSettings
    from voicebot.cloud.tts import TtsError
    from voicebot.local.demo import DemoError, DemoSettings, run_demo

    settings = DemoSettings(out_dir=args.out, thing=args.thing, topic_root=args.topic_root,
                            llm=LlmSettings(backend=args.llm), tts=args.tts)
    try:
        summary = run_demo(text=args.text, audio=args.audio, settings=settings,
                           echo=(lambda s: print(s, file=sys.stderr)) if args.json else print)
    except DemoError as exc:
        print(f"voicebot demo: {exc}", file=sys.stderr)
        return 1
    except (BackendError, TtsError) as exc:
        print(f"voicebot demo: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0


def cmd_cloud(args: argparse.Namespace) -> int:
    """The local cloud on a broker, until Ctrl-C: what the IoT rules, Lambdas, DynamoDB and Polly are on AWS."""
    import threading

    from voicebot.cloud.history import SqliteHistory
    from voicebot.cloud.llm import BackendError, LlmSettings, build_chat_model
    from voicebot.cloud.tts import TtsError, build_tts
    from voicebot.local.cloud import LocalCloud, default_template

    try:
        template = args.template or default_template()
        if not template.is_file():
            raise FileNotFoundError(f"--template {template}: no such file")
        model, llm_name = build_chat_model(LlmSettings(backend=args.llm))
        tts = build_tts(args.tts)
    except (BackendError, TtsError, FileNotFoundError) as exc:
        print(f"voicebot cloud: {exc}", file=sys.stderr)
        return 2
    history = SqliteHistory(args.history)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with LocalCloud(args.broker, model=model, history=history, tts=tts, topic_root=args.topic_root,
                        template=template) as cloud:
            rules = ", ".join(rule.name for rule in cloud.engine.rules)
            print(f"voicebot cloud ready on {args.broker}: rules {rules} from {template}; chat {llm_name}; speech "
                  f"{tts.name}; history {args.history} (Ctrl-C stops)", flush=True)
            while not stop.wait(0.5):  # (signals arrive on this thread between the waits)
                pass
    finally:
        history.close()
    print("voicebot cloud: stopped", file=sys.stderr)
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

    connection = connection_settings(args)
    sink = open_sink(args.sink, realtime=args.realtime)  # first: a wrong --sink is said at once, broker or not
    try:
        transport = connect(connection, client_id=f"voicebot-player-{args.thing}", wait_forever=True)
    except BaseException:
        sink.close()
        raise
    topics = Topics(args.topic_root, args.thing)
    try:
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
    from voicebot.edge.bargein import BargeInSettings
    from voicebot.edge.interpreter import Interpreter, InterpreterSettings
    from voicebot.edge.stt import SttError, choose_stt, open_stt
    from voicebot.edge.vad import VadSettings
    from voicebot.messaging import connect
    from voicebot.request_ids import default_state_file, keep_request_ids_in

    settings = InterpreterSettings(
        vad=VadSettings(engine=args.vad, aggressiveness=args.vad_aggressiveness, preroll_ms=args.preroll_ms,
                        hangover_ms=args.hangover_ms, max_utterance_s=args.max_utterance_s,
                        early_end_ms=args.early_end_ms, preempt_ms=args.preempt_ms,
                        quiet_margin_db=args.quiet_margin_db, end_of_turn=args.end_of_turn,
                        turn_model_ms=args.turn_model_ms),
        echo_tail_s=args.echo_tail_s, stop_word_enabled=bool(args.stop_word), stop_word=args.stop_word or "그만",
        barge_in=BargeInSettings(enabled=args.barge_in, min_speech_ms=args.barge_in_min_ms,
                                 echo_margin_db=args.barge_in_echo_margin_db,
                                 min_level_dbfs=args.barge_in_min_level_dbfs),
    )
    connection = connection_settings(args)
    try:
        stt_name, why = choose_stt(args.stt, region=args.region)
        log.info("speech recognition: %s (%s)", stt_name, why)
        keep_request_ids_in(default_state_file(args.thing))  # request order survives a restart after a clock jump
        source = open_source(args.source, frame_ms=settings.vad.frame_ms, realtime=args.realtime)
        stt = open_stt(stt_name, region=args.region)
    except SttError as exc:
        print(f"voicebot interpreter: {exc}", file=sys.stderr)
        return 2
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
    # One device: its own topics and its device-local ones; otherwise the whole fleet.
    filters = [f"{args.topic_root}/{args.thing}/#", f"{args.topic_root}/local/{args.thing}/#"] if args.thing \
        else [everything_filter(args.topic_root)]
    in_place = sys.stdout.isatty()  # a terminal shows the partial transcript updating in place; a pipe gets lines
    print(f"watching {' and '.join(filters)} on {getattr(transport, 'description', 'broker')}", file=sys.stderr,
          flush=True)

    async def run(stop: asyncio.Event) -> None:
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        for topic_filter in filters:
            transport.subscribe(topic_filter, 1, handoff_to_loop(asyncio.get_running_loop(), inbox))
        print("ready", file=sys.stderr, flush=True)
        seen, open_partial = 0, False
        stopper = asyncio.ensure_future(stop.wait())
        while not stop.is_set() and (not args.count or seen < args.count):
            getter = asyncio.ensure_future(inbox.get())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            seen += 1
            lines = formatter.lines(*getter.result())
            if in_place and formatter.partial and lines:
                print("\r\033[K" + lines[-1][: os.get_terminal_size().columns - 1], end="", flush=True)
                open_partial = True
                continue
            for line in lines:
                print(("\r\033[K" if open_partial else "") + line, flush=True)
                open_partial = False
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


def cmd_console(args: argparse.Namespace) -> int:
    from voicebot.console.server import Console, serve
    from voicebot.messaging import connect

    # (a voicebot-monitor-* client id: the read-only monitor policy allows exactly those to connect)
    transport = connect(connection_settings(args), client_id=f"voicebot-monitor-console-{os.getpid()}")
    console = Console(transport, args.topic_root, allow_ask=args.allow_ask)

    def ready(url: str) -> None:
        print(f"voicebot console on {url} (watching {args.topic_root}/# on "
              f"{getattr(transport, 'description', 'the broker')}; asking {'on' if args.allow_ask else 'off'})",
              flush=True)

    try:
        _run_until_signal(lambda stop: serve(console, args.host, args.port, stop, on_ready=ready))
    except OSError as exc:  # the port is taken
        print(f"voicebot console: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        transport.close()
    return 0


def cmd_deployment(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from voicebot.deployment import DeploymentError, main

    try:
        return main(args)
    except (DeploymentError, ValidationError, OSError) as exc:
        print(f"voicebot deployment: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


def cmd_bench(args: argparse.Namespace) -> int:
    from voicebot.bench.main import main as bench_main

    logging.getLogger().setLevel(logging.WARNING)  # the table is the output
    return bench_main(args)


COMMANDS = {"cloud": cmd_cloud, "bench": cmd_bench, "devices": cmd_devices, "device-policy": cmd_device_policy,
            "monitor": cmd_monitor, "deployment": cmd_deployment, "console": cmd_console, "demo": cmd_demo,
            "player": cmd_player, "interpreter": cmd_interpreter}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a blocking wait (a broker that is down) like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
