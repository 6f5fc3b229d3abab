"""The turn-taking set's harness (``python -m voicebot.bench.turnset``), whose figures the README quotes: one question
with a pause longer than the hangover, in real time, half-duplex and full duplex."""

from __future__ import annotations

import asyncio

import pytest

from voicebot.bench import turnset
from voicebot.bench.turns import BackendSettings, start_stack
from voicebot.edge.turn_model import SmartTurnModel

pytestmark = pytest.mark.slow  # real time: about 10 s a run


@pytest.fixture(scope="module")
def stack():
    stack = start_stack(BackendSettings(), workers=8)
    yield stack
    stack.close()


@pytest.mark.parametrize("full_duplex", [False, True])
def test_a_long_pause_loses_the_rest_half_duplex_and_barges_in_full_duplex(stack, full_duplex):
    question = turnset.build("네 알겠어요.", "그런데 내일은 어때요?", 1300, "finished")
    [outcome] = asyncio.run(turnset.run_lane(stack, "both", 0, f"fd-{full_duplex}", [question], SmartTurnModel(),
                                             full_duplex=full_duplex))
    assert outcome.premature and outcome.half_answered  # the answer to the first half started either way
    if full_duplex:  # the rest, said over it, stopped it and completed the question
        assert outcome.barged_in and not outcome.lost
    else:  # the microphone was muted while it played: the rest is lost
        assert not outcome.barged_in and outcome.lost
    report = turnset.report([outcome])
    assert report["all"]["barged_in"] == int(full_duplex) and report["all"]["lost"] == int(not full_duplex)
