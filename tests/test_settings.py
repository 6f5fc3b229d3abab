"""One typed settings model per component: the recipes' defaults, the CLI's defaults and the Greengrass entry's
defaults are the model's, and a live update applies every valid key and keeps the current value of a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from voicebot.cli import build_parser
from voicebot.edge.settings import InterpreterConfig, PlayerConfig
from voicebot.edge.vad import VadSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("recipe", "model"), [("com.voicebot.VoicePlayer", PlayerConfig),
                                                ("com.voicebot.VoiceInterpreter", InterpreterConfig)])
def test_the_recipe_defaults_are_the_models(recipe, model):
    config = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())["ComponentConfiguration"][
        "DefaultConfiguration"]
    settings = {k: v for k, v in config.items() if k != "accessControl"}
    assert model.model_validate(settings) == model()  # same values, parsed as the component parses them
    aliases = {f.alias for f in model.model_fields.values()}
    assert set(settings) <= aliases  # no recipe key the component would ignore


def test_the_cli_defaults_are_the_models():
    parser = build_parser()
    player = parser.parse_args(["player", "--broker", "mqtt://x:1"])
    interp = parser.parse_args(["interpreter", "--broker", "mqtt://x:1"])
    p, i = PlayerConfig(), InterpreterConfig()
    assert (player.volume, player.gap_timeout, player.sink) == (p.volume, p.gap_timeout_s, p.sink)
    assert (interp.region, interp.source, interp.vad) == (i.region, i.source, i.vad_engine)
    assert interp.stt == "auto"  # the device's Transcribe when AWS credentials are found, else Vosk (choose_stt)
    assert (interp.vad_aggressiveness, interp.preroll_ms, interp.hangover_ms, interp.max_utterance_s,
            interp.echo_tail_s) == (i.vad_aggressiveness, i.preroll_ms, i.hangover_ms, i.max_utterance_s, i.echo_tail_s)
    assert (interp.end_of_turn, interp.turn_model_ms) == (i.end_of_turn, i.turn_model_ms)
    assert (interp.early_end_ms, interp.preempt_ms, interp.quiet_margin_db) == (
        i.early_end_ms, i.preempt_ms, i.quiet_margin_db)


def test_the_vad_defaults_are_the_models():
    """What a VAD built without the component configuration (tests, the bench) does is what a device does."""
    v, i = VadSettings(), InterpreterConfig()
    assert (v.engine, v.aggressiveness, v.preroll_ms, v.hangover_ms, v.max_utterance_s, v.early_end_ms, v.preempt_ms,
            v.quiet_margin_db, v.end_of_turn, v.turn_model_ms) == (
        i.vad_engine, i.vad_aggressiveness, i.preroll_ms, i.hangover_ms, i.max_utterance_s, i.early_end_ms,
        i.preempt_ms, i.quiet_margin_db, i.end_of_turn, i.turn_model_ms)


def test_the_barge_in_defaults_are_the_models():
    from voicebot.edge.bargein import BargeInSettings

    b, i = BargeInSettings(), InterpreterConfig()
    assert (b.enabled, b.min_speech_ms, b.echo_margin_db, b.min_level_dbfs) == (
        i.barge_in, i.barge_in_min_ms, i.barge_in_echo_margin_db, i.barge_in_min_level_dbfs)


def test_a_live_update_applies_the_valid_keys_and_keeps_the_rest(caplog):
    current = PlayerConfig(volume=0.5)
    new = current.merged({"Volume": "1.5", "GapTimeoutS": "2.5", "Unknown": "x"})
    assert new.volume == 0.5 and new.gap_timeout_s == 2.5  # 1.5 is out of range: kept 0.5
    assert "Volume='1.5' rejected" in caplog.text and "unknown setting 'Unknown'" in caplog.text
    interp = InterpreterConfig().merged({"HangoverMs": "50", "PrerollMs": "400", "SttBackend": "whisper"})
    assert (interp.hangover_ms, interp.preroll_ms, interp.stt) == (700, 400, "transcribe")


def test_a_boolean_is_not_a_number_and_every_problem_is_reported_once():
    """``Volume: true`` was taken as 1.0 by pydantic's lax floats; numbers as strings (as Greengrass stores them)
    still work, and each rejected value or unknown key is one line naming the key."""
    problems: list[str] = []
    new = PlayerConfig(volume=0.5).merged({"Volume": True, "GapTimeoutS": "2", "Volumen": "0.3",
                                           "accessControl": {"x": 1}}, problems)
    assert new.volume == 0.5 and new.gap_timeout_s == 2.0
    assert len(problems) == 2, problems
    assert problems[0].startswith("unknown setting 'Volumen'")
    assert problems[1].startswith("setting Volume='True' rejected") and "keeping 0.5" in problems[1]
    assert InterpreterConfig().merged({"HangoverMs": False}).hangover_ms == 700
    assert InterpreterConfig().merged({"HangoverMs": 900}).hangover_ms == 900  # a real number still works
