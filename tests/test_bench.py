"""The benchmark runs end to end on a small scale (the real figures come from `voicebot bench`, never from tests)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from voicebot.bench import cost, endofspeech, footprint
from voicebot.bench.synthetic import ANSWER
from voicebot.cloud.chat import ChatSettings
from voicebot.edge.stt import SttResult
from voicebot.sentences import SentenceSplitter

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`


@pytest.mark.timeout(400)  # (every phase, the barge-in one with live trials warm and cold: about 3-4 minutes)
def test_bench_small_run_writes_every_figure_and_a_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "voicebot.cli", "bench", "--turns", "2", "--devices", "5", "--fleet-turns", "1",
         "--skip-footprint", "--ttft-ms", "100", "--tokens-per-s", "200", "--audio-ms-per-char", "4",
         "--eos-turns", "2", "--skip-eos-vosk", "--stt-lags-ms", "0,800", "--barge-in-minutes", "0.5",
         "--barge-in-trials", "2",
         "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=380, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bench:" in proc.stderr and "left" in proc.stderr  # the progress bar, on stderr
    r = json.loads(out.read_text())
    assert set(r["phase_seconds"]) == {"start", "streaming turns", "whole-answer turns", "fleet", "end of speech",
                                       "barge-in"}
    assert set(r["overhead_ms"]) == {"p50", "p95"} and r["overhead_ms"]["p50"] is not None
    assert r["ttfa_ms"]["streaming"] < r["ttfa_ms"]["baseline"] and 0 < r["ttfa_ratio"] < 1
    assert r["load"]["devices"] == 5 and r["load"]["turns"] == 5 and r["load"]["lost"] == 0
    assert set(r["load"]["overhead_ms"]) == {"p50", "p95"}
    assert r["gap_ms"]["p50"] is not None
    assert r["cost_usd"]["per_turn"] > 0 and r["cost_usd"]["idle_device_day_no_vad"] == 34.56
    splitter = SentenceSplitter(first_clause_chars=ChatSettings().first_clause_chars)
    pieces = splitter.feed(ANSWER) + splitter.flush()
    assert len(pieces) == 5  # the four-sentence answer, its first clause on its own
    assert len(r["turns"]["representative"]["sentences"]) == len(pieces)  # each played
    assert png.stat().st_size > 20_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "pipeline overhead" in proc.stdout and "ttfa ratio" in proc.stdout
    eos = r["end_of_speech"]
    lags = eos["by_partial_lag_ms"]
    assert set(lags) == {"0", "800"} and eos["default_mode"] == "both"
    for lag in lags.values():
        assert set(lag) == {"hangover", "text", "audio", "both", "default"} and lag["default"] == lag["both"]
        assert all(mode["turns"] == 2 and mode["p50"] is not None and mode["p95"] >= mode["p50"]
                   for mode in lag.values())
    # the text cue sends the transcript sooner than the hangover with a recognizer that shows the words at once, and
    # a recognizer that shows them 800 ms late takes that gain away; the audio model does not need the words
    assert lags["0"]["text"]["transcript_p50"] < lags["0"]["hangover"]["transcript_p50"]
    assert lags["800"]["text"]["transcript_p50"] > lags["0"]["text"]["transcript_p50"] + 400
    assert lags["800"]["audio"]["transcript_p50"] < lags["800"]["text"]["transcript_p50"]
    assert 0 < eos["floor_ms"] < lags["0"]["both"]["p50"]
    assert eos["turn_model_decision_ms"]["decisions"] > 0
    assert eos["cloud_projection"]["projected_p50_ms"] > eos["cloud_projection"]["measured_p50_ms"]
    assert all(h["kind"] in ("quoted", "assumed") and h["source"] for h in eos["cloud_projection"]["hops"])
    assert "by recognizer partial lag" in proc.stdout and "waterfall p50 (ms): transcript" in proc.stdout
    assert (tmp_path / "bench-end-of-turn.png").read_bytes()[:4] == b"\x89PNG"
    b = r["barge_in"]  # full duplex in a simulated room: the keys `voicebot bench --quick --json` promises
    assert b["erle_db"] > 10 and b["false_per_10min"] >= 0 and b["device_speech_minutes"] >= 0.4
    assert b["latency_ms"]["p50"] is not None and b["latency_ms"]["p95"] >= b["latency_ms"]["p50"]
    assert all(t["cut"] for t in b["trials"]) and len(b["transcripts"]["questions"]) == 6
    assert 0 <= b["transcripts"]["words_kept_pct"] <= 100 and 0 < b["transcripts"]["words_kept_again_pct"] <= 100
    assert "false barge-ins per 10 min" in proc.stdout
    sweep = b["decision_sweep_ms"]  # decided offline: the same trials, far end 1-15 ms off, cold and warm canceller
    assert all(sweep[k]["runs"] == 20 and sweep[k]["before_onset"] == 0 and sweep[k]["p50"] > 0 for k in ("cold", "warm"))
    assert set(sweep["cold"]["by_room_attenuation_db"]) == {"0.0", "3.0", "6.0", "9.0", "12.0"}
    assert set(sweep["by_stamp_jitter_ms"]) == {"0.0", "0.5", "2.0"} and sweep["stamp_jitter_ms"] == 2.0
    assert all(v["before_onset"] == 0 for v in sweep["by_stamp_jitter_ms"].values())
    assert b["latency_first_answer_ms"]["p50"] is not None and all(t["cut"] for t in b["first_answer_trials"])
    changes = b["false_after_room_change"]  # the echo changed under the canceller: never the device's own voice
    assert changes["changes"] == 15 and changes["false_barge_ins"] == 0
    assert changes["linear_trusted_before"] >= 5  # (else the 0 says nothing about the linear filter's view)
    assert b["false_after_harsh_room_change"]["changes"] == 10  # (reported, no target: beyond what AEC3 follows)


def test_the_synthetic_recognizer_shows_only_the_words_already_spoken():
    """It goes by the speech the microphone has delivered, not by the audio it received: a pre-roll of silence before
    the question is not words."""
    script = endofspeech.Script()
    script.current = endofspeech.Spoken("오늘 서울 날씨 어때요?", [], speech_s=1.0)

    async def main() -> list[SttResult]:
        session = await endofspeech.SyntheticRecognizer(script, partial_every_s=0.001).open()
        script.heard_s = 0.3
        await session.send(bytes(2 * 16 * 300))  # a 300 ms pre-roll, most of it the silence before the question
        partials = [await session.queue.get()]
        script.heard_s = 1.0
        await session.send(bytes(2 * 16 * 30))
        partials.append(await session.queue.get())
        await session.finish()
        return [*partials, *[result async for result in session.results()]]

    shown = asyncio.run(main())
    assert [(r.text, r.final) for r in shown] == [("오늘", False), ("오늘 서울 날씨 어때요?", False),
                                                  ("오늘 서울 날씨 어때요?", True)]


def test_footprint_on_a_short_input(broker):
    result = footprint.measure(broker.url, minutes=0.5)
    vosk, vad = result["interpreter_vosk"], result["interpreter_transcribe_shaped"]
    assert vosk["utterances"] == 3 and vad["utterances"] == 3  # the three spoken questions, nothing else
    assert 0 < vosk["stt_seconds"] < vosk["input_seconds"] / 2  # the silence never reached the recognizer
    assert vosk["rss_mb"] > vad["rss_mb"] > 20  # the Korean model is what makes the difference
    assert result["player"]["played"] and result["player"]["rss_mb"] > 20
    assert result["real_backends"]["vosk_rtf"] > 0 and result["real_backends"]["espeak_ms_per_sentence"] > 0


def test_cost_model():
    p = cost.UnitPrices()
    counts = cost.TurnCounts(utterance_s=3, prompt_chars=1200, answer_chars=120, polly_chars=120, iot_units=40,
                             rules_triggered=6, lambda_gb_s=1.0, lambda_requests=6)
    parts = cost.per_turn(counts, p)
    assert parts["transcribe"] == round(15 / 60 * 0.024, 7)  # the 15 s minimum per stream applies
    assert parts["bedrock_input"] == round(1000 / 1e6 * 1.0, 7)
    assert parts["polly"] == round(120 / 1e6 * 16, 7)
    assert cost.idle_device_day(p, false_streams_per_day=0, mean_stream_s=3) == (0.0, 34.56)
    assert cost.idle_device_day(p, false_streams_per_day=100, mean_stream_s=3)[0] == round(100 * 0.25 * 0.024, 4)
    assert cost.units(5120) == 1 and cost.units(5121) == 2
