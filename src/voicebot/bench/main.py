"""``voicebot bench``: latency waterfall, streaming vs whole-answer baseline, gaps, fleet load, footprint, cost.

Every figure comes from one run of the real local stack with synthetic backends whose latencies are parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psutil

from voicebot.bench import cost, endofspeech, footprint
from voicebot.bench.progress import BenchProgress
from voicebot.bench.stats import pct
from voicebot.bench.synthetic import ANSWER, SyntheticChatModel
from voicebot.bench.turns import BackendSettings, Turn, fleet_turns, sequential_turns, start_stack
from voicebot.edge.turn import MODES
from voicebot.edge.vad import VadSettings
from voicebot.sentences import SentenceSplitter

EOS_STAGES = [("transcript", "transcript"), ("chat_invoked", "chat"), ("first_token", "token"),
              ("first_sentence", "first piece"), ("first_audio", "audio"), ("first_playing", "playing")]
# The whole-answer ratio (streaming / baseline time to first audio) is printed, not a target: both paths share the
# model's time to first token, so for short answers no pipeline gets near 0.30. What a person feels is the end of
# speech -> first audio, and its ratio to the floor (the model's first sentence + its TTS).
TARGETS = {"overhead_p95_ms": 30, "gap_p95_ms": 50, "load_overhead_p95_ms": 100,
           "eos_p50_ms": 1000, "eos_p95_ms": 1400, "eos_floor_ratio_p50": 1.25}


def p50_p95(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95)}


def analyse(turn: Turn, model: SyntheticChatModel, expected_sentences: int, first_clause_chars: int = 0
            ) -> dict[str, Any]:
    """One turn's waterfall (ms from the transcript's publish) and what the backends spent on its critical path."""
    call = model.call(turn.question, turn.chat[0] if turn.chat else float("-inf"))
    first_seq = min(turn.playing) if turn.playing else None
    ms = lambda t: None if t is None else round((t - turn.t0) * 1000, 1)  # noqa: E731
    out: dict[str, Any] = {
        "mode": turn.mode, "thing": turn.thing, "request_id": turn.request_id,
        "chat_invoked": ms(turn.chat[0]) if turn.chat else None,
        "first_token": ms(call.tokens[0][0]) if call and call.tokens else None,
        "first_sentence": ms(turn.first_sentence), "first_audio": ms(turn.first_audio),
        "first_playing": ms(turn.playing[first_seq]) if first_seq is not None else None,
        "last_played": ms(max(turn.played.values())) if turn.played else None,
        "sentences": [(seq, ms(turn.playing[seq]), ms(turn.played.get(seq))) for seq in sorted(turn.playing)],
        "gaps_ms": [round((turn.playing[k] - turn.played[k - 1]) * 1000, 1)
                    for k in sorted(turn.playing) if k - 1 in turn.played],
        "lost": max(0, expected_sentences - len(turn.played)),
    }
    if call and call.tokens and turn.tts_first and out["first_playing"] is not None:
        first = call.first_piece(first_clause_chars) if turn.mode != "baseline" else None
        llm_end = first[0] if first else call.tokens[-1][0]
        backend_s = (llm_end - call.started) + (turn.tts_first[1] - turn.tts_first[0])
        out["backend_ms"] = round(backend_s * 1000, 1)
        out["overhead_ms"] = round(out["first_playing"] - backend_s * 1000, 1)
    return out


#: Seconds each phase takes on 2 cores (measured: the JSON's phase_seconds), per unit of what it depends on.
PHASE_SECONDS = {"start": 1.0, "turn": 8.0, "fleet_round": 10.0, "eos_turn": 4.3, "footprint": 25.0,
                 "barge_in_trial": 13.0, "barge_in_minute": 2.0, "barge_in_fixed": 40.0}


def lags_of(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(int(v) for v in str(args.stt_lags_ms).split(",") if v.strip())


def estimate_phases(args: argparse.Namespace, turns: int, fleet_rounds: int, eos_turns: int) -> dict[str, float]:
    """Estimated seconds per phase, for the progress bar's time left (see PHASE_SECONDS)."""
    eos_modes = len(lags_of(args)) + (not args.skip_eos_vosk)  # (the four ways to end a turn run at once per lag)
    return {
        "start": PHASE_SECONDS["start"],
        "streaming turns": turns * PHASE_SECONDS["turn"],
        "whole-answer turns": turns * PHASE_SECONDS["turn"],
        "fleet": fleet_rounds * PHASE_SECONDS["fleet_round"],
        "end of speech": eos_turns * eos_modes * PHASE_SECONDS["eos_turn"],
        "footprint": 0.0 if args.skip_footprint else PHASE_SECONDS["footprint"] * args.input_minutes / 10,
        "barge-in": 0.0 if args.skip_barge_in else (
            barge_in_of(args)[1] * PHASE_SECONDS["barge_in_trial"] + barge_in_of(args)[0]
            * PHASE_SECONDS["barge_in_minute"] + PHASE_SECONDS["barge_in_fixed"]),
    }


def barge_in_of(args: argparse.Namespace) -> tuple[float, int]:
    """Minutes of device speech and live trials of the barge-in phase."""
    return (args.barge_in_minutes or (3.0 if args.quick else 10.0), args.barge_in_trials or (6 if args.quick else 20))


def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = BackendSettings(ttft_s=args.ttft_ms / 1000, tokens_per_s=args.tokens_per_s,
                               tts_base_s=args.tts_base_ms / 1000, tts_per_char_s=args.tts_per_char_ms / 1000,
                               audio_s_per_char=args.audio_ms_per_char / 1000, answer=args.answer or ANSWER)
    turns = args.turns or (3 if args.quick else 10)
    fleet_rounds = args.fleet_turns or (1 if args.quick else 3)
    started = time.monotonic()
    eos_turns = 0 if args.skip_eos else args.eos_turns or (6 if args.quick else 20)
    progress = BenchProgress(estimate_phases(args, turns, fleet_rounds, eos_turns), enabled=not args.no_progress)
    with progress.phase("start"):
        stack = start_stack(backends, workers=max(32, args.devices * 6))
    if args.first_clause_chars is not None:
        stack.cloud.chat.settings = replace(stack.cloud.chat.settings, first_clause_chars=args.first_clause_chars)
    pieces = SentenceSplitter(first_clause_chars=stack.cloud.chat.settings.first_clause_chars)
    expected = len(pieces.feed(backends.answer) + pieces.flush())  # what the chat sends, one audio each
    try:
        stack.set_streaming(True)
        with progress.phase("streaming turns"):
            streaming = asyncio.run(sequential_turns(stack, "streaming", turns))
        stack.set_streaming(False)
        with progress.phase("whole-answer turns"):
            baseline = asyncio.run(sequential_turns(stack, "baseline", turns))
        stack.set_streaming(True)
        with progress.phase("fleet"):
            fleet, fleet_cpu = asyncio.run(fleet_turns(stack, args.devices, fleet_rounds,
                                                       spread_s=args.fleet_spread_s))
        eos = None
        if eos_turns:
            with progress.phase("end of speech"):
                vad = VadSettings(early_end_ms=args.early_end_ms, preempt_ms=args.preempt_ms,
                                  end_of_turn=args.end_of_turn, turn_model_ms=args.turn_model_ms)
                eos = endofspeech.measure(
                    stack, turns=eos_turns, vad=vad, partial_every_s=args.stt_partial_every_ms / 1000,
                    final_delay_s=args.stt_final_ms / 1000, lags_ms=lags_of(args),
                    first_clause_chars=stack.cloud.chat.settings.first_clause_chars, vosk=not args.skip_eos_vosk)
                eos["cloud_projection"] = endofspeech.projection(eos)
        foot = None
        if not args.skip_footprint:
            with progress.phase("footprint"):
                foot = footprint.measure(stack.broker.url, minutes=args.input_minutes)
        barge = None
        if not args.skip_barge_in:
            with progress.phase("barge-in"):
                from voicebot.bench import bargein
                from voicebot.edge.stt import VoskBackend

                minutes, trials = barge_in_of(args)
                barge = bargein.measure(stack.broker.url, minutes=minutes, trials=trials, vosk=VoskBackend())
    finally:
        stack.close()
        progress.close()

    clause = stack.cloud.chat.settings.first_clause_chars
    s_rows = [analyse(t, stack.model, expected, clause) for t in streaming]
    b_rows = [analyse(t, stack.model, 1) for t in baseline]
    f_rows = [analyse(t, stack.model, expected, clause) for t in fleet]
    ttfa_s = round(statistics.median([r["first_playing"] for r in s_rows if r["first_playing"] is not None]), 1)
    ttfa_b = round(statistics.median([r["first_playing"] for r in b_rows if r["first_playing"] is not None]), 1)

    # Cost per turn from what the streaming turns actually did.
    n = len(streaming)
    prices = cost.UnitPrices(transcribe_per_min=args.price_transcribe_per_min,
                             haiku_input_per_mtok=args.price_haiku_input, haiku_output_per_mtok=args.price_haiku_output,
                             polly_neural_per_mchar=args.price_polly_per_mchar,
                             iot_per_m_messages=args.price_iot_per_m)
    utter_s = (foot["interpreter_vosk"]["stt_seconds"] / max(1, foot["interpreter_vosk"]["utterances"])
               if foot else 3.0)
    counts = cost.TurnCounts(
        utterance_s=utter_s,
        prompt_chars=statistics.mean(stack.model.call(t.question).prompt_chars for t in streaming),
        answer_chars=statistics.mean(t.answer_chars for t in streaming),
        polly_chars=statistics.mean(t.answer_chars for t in streaming),
        iot_units=sum(t.message_units for t in streaming) / n,
        rules_triggered=sum(1 + t.answers for t in streaming) / n,
        lambda_gb_s=sum((t.chat[1] - t.chat[0]) * 0.5 + sum(t.speech_spans) * 0.25 for t in streaming if t.chat) / n,
        lambda_requests=sum(1 + len(t.speech_spans) for t in streaming) / n,
    )
    parts = cost.per_turn(counts, prices)
    false_streams = max(0, foot["interpreter_vosk"]["utterances"] - len(footprint.UTTERANCES)) if foot else 0
    idle_vad, idle_no_vad = cost.idle_device_day(
        prices, false_streams_per_day=false_streams * 1440 / args.input_minutes, mean_stream_s=utter_s)

    overhead_s = [r["overhead_ms"] for r in s_rows if "overhead_ms" in r]
    gaps = [g for r in s_rows for g in r["gaps_ms"]]
    representative = sorted(s_rows, key=lambda r: r["first_playing"] or 0)[len(s_rows) // 2]
    baseline_rep = sorted(b_rows, key=lambda r: r["first_playing"] or 0)[len(b_rows) // 2]
    result: dict[str, Any] = {
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
        "parameters": {**asdict(backends), "turns": turns, "devices": args.devices, "fleet_turns": fleet_rounds,
                       "quick": args.quick, "fleet_spread_s": args.fleet_spread_s},
        "overhead_ms": p50_p95(overhead_s),
        "ttfa_ms": {"streaming": ttfa_s, "baseline": ttfa_b},
        "ttfa_ratio": round(ttfa_s / ttfa_b, 3),
        "gap_ms": p50_p95(gaps),
        "load": {"devices": args.devices, "turns": len(fleet), "lost": sum(r["lost"] for r in f_rows),
                 "overhead_ms": p50_p95([r["overhead_ms"] for r in f_rows if "overhead_ms" in r]),
                 "ttfa_ms": p50_p95([r["first_playing"] for r in f_rows if r["first_playing"] is not None]),
                 "gap_ms": p50_p95([g for r in f_rows for g in r["gaps_ms"]]), **fleet_cpu},
        "footprint": ({"interpreter_rss_mb": foot["interpreter_vosk"]["rss_mb"],
                       "interpreter_transcribe_shaped_rss_mb": foot["interpreter_transcribe_shaped"]["rss_mb"],
                       "player_rss_mb": foot["player"]["rss_mb"], **foot} if foot else None),
        "end_of_speech": eos,
        "barge_in": barge,
        "cost_usd": {"per_turn": round(sum(parts.values()), 6), "parts": parts,
                     "idle_device_day_vad": idle_vad, "idle_device_day_no_vad": idle_no_vad,
                     "counts": asdict(counts), "prices": cost.prices_dict(prices)},
        "targets": TARGETS,
        "turns": {"streaming": s_rows, "baseline": b_rows, "fleet": f_rows, "representative": representative,
                  "baseline_representative": baseline_rep},
        "seconds": round(time.monotonic() - started, 1),
        "phase_seconds": progress.seconds,
    }
    return result


def table(r: dict[str, Any]) -> str:
    def row(name: str, value: Any, target: str = "") -> str:
        return f"  {name:<44} {value!s:>22}  {target}"

    f = r["footprint"] or {}
    eos = r.get("end_of_speech")
    lines = [
        f"voicebot bench ({'quick' if r['parameters']['quick'] else 'full'}, {r['seconds']} s) on "
        f"{r['machine']['cpus']} CPUs / {r['machine']['memory_gb']} GB",
        row("pipeline overhead p50 / p95 (ms)", f"{r['overhead_ms']['p50']} / {r['overhead_ms']['p95']}",
            f"target p95 <= {TARGETS['overhead_p95_ms']}"),
        row("time to first audio, streaming (ms)", r["ttfa_ms"]["streaming"]),
        row("time to first audio, whole-answer baseline (ms)", r["ttfa_ms"]["baseline"]),
        row("ttfa ratio streaming / baseline", r["ttfa_ratio"], "(no target: see end of speech below)"),
        row("gap between sentences p50 / p95 (ms)", f"{r['gap_ms']['p50']} / {r['gap_ms']['p95']}",
            f"target p95 <= {TARGETS['gap_p95_ms']}"),
        row(f"fleet: {r['load']['devices']} devices, {r['load']['turns']} turns, lost", r["load"]["lost"], "target 0"),
        row("fleet overhead p50 / p95 (ms)", f"{r['load']['overhead_ms']['p50']} / {r['load']['overhead_ms']['p95']}",
            f"target p95 <= {TARGETS['load_overhead_p95_ms']}"),
        row("fleet CPU: this process / mosquitto (%)",
            f"{r['load']['process_cpu_percent']} / {r['load']['broker_cpu_percent']}"),
    ]
    if eos:
        default = eos["default_mode"]
        lines.append(f"  end of speech -> first audio p50 / p95 (ms) by recognizer partial lag; default: {default}")
        lines.append("  " + f"{'lag (ms)':<12}" + "".join(f"{m:>18}" for m in MODES))
        for lag, modes in eos["by_partial_lag_ms"].items():
            lines.append("  " + f"{lag:<12}" + "".join(f"{modes[m]['p50']!s:>9}/{modes[m]['p95']!s:<8}" for m in MODES))
        zero = eos["by_partial_lag_ms"].get("0", {}).get("default")
        if zero:
            lines += [
                row("end of speech -> first audio p50 / p95 (ms), default, lag 0", f"{zero['p50']} / {zero['p95']}",
                    f"target {TARGETS['eos_p50_ms']} / {TARGETS['eos_p95_ms']}"),
                "    waterfall p50 (ms): " + " -> ".join(
                    f"{label} {zero['waterfall']['p50'][key]:.0f}" for key, label in EOS_STAGES
                    if zero["waterfall"]["p50"][key] is not None),
                row("  ratio to the floor p50 (floor ms)", f"{zero['ratio_p50']} ({eos['floor_ms']:.0f})",
                    f"target <= {TARGETS['eos_floor_ratio_p50']}"),
            ]
        if eos.get("vosk"):
            v = eos["vosk"]
            lines.append(row("  default with Vosk (on this CPU) p50 / p95 (ms)", f"{v['p50']} / {v['p95']}"))
        d = eos["turn_model_decision_ms"]
        lines.append(row("  audio turn model decision p50 / p95 (ms)", f"{d['p50']} / {d['p95']}"))
        c = eos.get("cloud_projection")
        if c:
            lines.append(row("  projected on AWS (lag {lag} ms) p50 (ms)".format(lag=c["lag_ms"]),
                             c["projected_p50_ms"], "(measured + quoted hops)"))
    if f:
        vosk, vad = f["interpreter_vosk"], f["interpreter_transcribe_shaped"]
        lines += [
            row("interpreter RSS: Vosk / Transcribe-shaped (MB)", f"{vosk['rss_mb']} / {vad['rss_mb']}"),
            row("  Transcribe-shaped without the audio turn model: RSS (MB) / CPU (%)",
                f"{f['interpreter_transcribe_shaped_without_turn_model']['rss_mb']} / "
                f"{f['interpreter_transcribe_shaped_without_turn_model']['cpu_percent_realtime']}"),
            row("interpreter CPU at real time: Vosk / VAD only (%)",
                f"{vosk['cpu_percent_realtime']} / {vad['cpu_percent_realtime']}"),
            row("player RSS (MB)", f["player"]["rss_mb"]),
            row(f"audio sent to STT of {vosk['input_seconds']:.0f} s input (s)",
                f"{vosk['stt_seconds']} ({vosk['utterances']} utt.)"),
            row("espeak-ng per sentence (ms) / Vosk real-time factor",
                f"{f['real_backends']['espeak_ms_per_sentence']} / {f['real_backends']['vosk_rtf']}"),
        ]
    b = r.get("barge_in")
    if b:
        lines += [
            row("barge-in: echo return loss enhancement p50 (dB)", b["erle_db"], "(5 rooms, 10-150 ms, 0-12 dB)"),
            row(f"  false barge-ins per 10 min of device speech ({b['device_speech_minutes']} min)",
                b["false_per_10min"], "target 0"),
            row("  latency, speech onset -> playback stopped p50 / p95 (ms)",
                f"{b['latency_ms']['p50']} / {b['latency_ms']['p95']}", "target p95 <= 400"),
            row("  ... the first answer after the interpreter starts",
                f"{b['latency_first_answer_ms']['p50']} / {b['latency_first_answer_ms']['p95']}",
                "canceller still learning the room"),
            row("  false barge-ins after the echo changed (volume, position, delay)",
                f"{b['false_after_room_change']['false_barge_ins']} of {b['false_after_room_change']['changes']}",
                f"target 0; linear filter trusted at {b['false_after_room_change']['linear_trusted_before']}"),
            row("  ... after a harsh change (volume +12 dB, moved and +6 dB)",
                f"{b['false_after_harsh_room_change']['false_barge_ins']} of "
                f"{b['false_after_harsh_room_change']['changes']}", "beyond what AEC3 follows"),
            row("  decided, offline, p50 / p95 (ms): canceller just started / warm",
                f"{b['decision_sweep_ms']['cold']['p50']} / {b['decision_sweep_ms']['cold']['p95']}, "
                f"{b['decision_sweep_ms']['warm']['p50']} / {b['decision_sweep_ms']['warm']['p95']}",
                f"far end 1-15 ms off, each sentence ±{b['decision_sweep_ms']['stamp_jitter_ms']} ms more"),
            row("  ... warm, by each sentence's stamp error (ms): p95",
                ", ".join(f"±{j}: {v['p95']}" for j, v in b["decision_sweep_ms"]["by_stamp_jitter_ms"].items())),
            row("  Vosk words kept, question over the answer vs quiet (%)", b["transcripts"]["words_kept_pct"],
                f"the same question again in the quiet: {b['transcripts']['words_kept_again_pct']}"),
            row("  echo canceller: RSS added (MB) / CPU per s of audio (%)",
                f"{b['cost']['rss_mb_added']} / {b['cost']['cpu_percent_per_audio_second']}"),
        ]
    c = r["cost_usd"]
    lines += [
        row("cost per turn (USD)", f"{c['per_turn']:.5f}"),
        row("idle device-day STT: VAD / no VAD (USD)", f"{c['idle_device_day_vad']} / {c['idle_device_day_no_vad']}"),
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [3, 2]})
    rows: list[tuple[str, str, float, float]] = []
    for label, rep, color in (("streaming", r["turns"]["representative"], "tab:blue"),
                              ("baseline", r["turns"]["baseline_representative"], "tab:orange")):
        for key, name in (("chat_invoked", "chat invoked"), ("first_token", "first token"),
                          ("first_sentence", "answer published"), ("first_audio", "audio published")):
            if rep.get(key) is not None:
                rows.append((f"{label}: {name}", color, 0.0, rep[key]))
        for seq, start, end in rep["sentences"]:
            if start is not None and end is not None:
                rows.append((f"{label}: sentence {seq} playing", color, start, end - start))
    for i, (_, color, start, width) in enumerate(rows):
        # milestones are drawn from 0 (how long until ...), playback as the span it lasted
        ax.barh(i, max(width, 2), left=start, color=color, alpha=0.85 if start else 0.35)
        if not start:
            ax.text(width + 30, i, f"{width:.0f} ms", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [r_[0] for r_ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since the transcript was published (ms)")
    ax.set_title("one representative turn: streaming (blue, above) vs whole-answer baseline (orange, below)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="tab:blue", label="streaming"), Patch(color="tab:orange", label="baseline")],
              loc="upper right")
    import numpy as np

    series = [
        (f"streaming, {r['load']['devices']} devices at once", "tab:green",
         [t["first_playing"] for t in r["turns"]["fleet"]]),
        ("streaming, one device", "tab:blue", [t["first_playing"] for t in r["turns"]["streaming"]]),
        ("baseline, one device", "tab:orange", [t["first_playing"] for t in r["turns"]["baseline"]]),
    ]
    values = [v for _, _, vs in series for v in vs if v is not None]
    bins = np.histogram_bin_edges(values, bins=40) if values else 10
    for label, color, vs in series:
        vs = [v for v in vs if v is not None]
        if vs:
            hist.hist(vs, bins=bins, color=color, alpha=0.7, label=f"{label} (median {statistics.median(vs):.0f} ms)")
    hist.set_xlabel("time to first audio (ms)")
    hist.set_ylabel("turns")
    hist.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_end_of_turn(eos: dict[str, Any], path: Path) -> None:
    """End of speech -> first audio against the recognizer's partial lag, one line per way to end a turn (p50, with
    the p95 as a band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lags = [int(lag) for lag in eos["by_partial_lag_ms"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    for mode, color in zip(MODES, ("tab:gray", "tab:blue", "tab:orange", "tab:green"), strict=True):
        p50 = [eos["by_partial_lag_ms"][str(lag)][mode]["p50"] for lag in lags]
        p95 = [eos["by_partial_lag_ms"][str(lag)][mode]["p95"] for lag in lags]
        label = f"{mode} (default)" if mode == eos["default_mode"] else mode
        ax.plot(lags, p50, marker="o", color=color, label=label, linewidth=2.5 if mode == eos["default_mode"] else 1.5)
        ax.fill_between(lags, p50, p95, color=color, alpha=0.12)
    ax.plot([0, 500, 800], [TARGETS["eos_p50_ms"], 1400, 1700], "kx", markersize=10, label="targets (p50)")
    ax.set_xlabel("recognizer partial lag (ms): how much later than the audio it shows each word")
    ax.set_ylabel("end of speech -> first audio (ms), p50 (line) to p95 (band)")
    ax.set_title("when does the answer start? four ways to end a turn")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    result = run(args)
    print(table(result))
    print("phases (s): " + ", ".join(f"{name} {sec}" for name, sec in result["phase_seconds"].items()),
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    if args.plot:
        plot(result, args.plot)
        if result.get("end_of_speech"):
            plot_end_of_turn(result["end_of_speech"], args.plot.with_name(f"{args.plot.stem}-end-of-turn.png"))
    return 0
