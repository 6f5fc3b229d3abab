"""PlaybackQueue: pure ordering logic, driven with a fake clock (no sleeps)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.edge.playback import Finished, Interrupted, Play, PlaybackQueue, Skip
from voicebot.protocol import AudioMessage, new_request_id, split_audio


def sentence_messages(rid: str, seq: int, *, last: bool, size: int = 10, parts_limit: int = 100_000):
    audio = bytes([seq % 256]) * size + rid.encode()
    return split_audio(request_id=rid, seq=seq, last=last, text=f"문장 {seq}", audio=audio, format="pcm_s16le",
                       sample_rate=16000, limit=parts_limit)


def run(queue: PlaybackQueue, actions: list) -> list:
    """Play everything that can be played now (playback is instant in these tests)."""
    log = list(actions)
    while True:
        step = queue.next(_now[0])
        log += step
        if step and isinstance(step[-1], Play):
            queue.playback_done(_now[0])
            continue
        return log


_now = [0.0]


def deliver(queue: PlaybackQueue, messages: list[AudioMessage], start: float = 0.0) -> list:
    log = []
    for i, m in enumerate(messages):
        _now[0] = start + i * 0.001
        log += run(queue, queue.add(m, _now[0]))
    return log


def settle(queue: PlaybackQueue, log: list) -> list:
    """Let time pass until nothing more will happen."""
    for _ in range(100):
        wake = queue.wake_at()
        if wake is None:
            return log
        _now[0] = wake
        log = log + run(queue, [])
    raise AssertionError("queue never settled")


def played(log):
    return [(a.sentence.request_id, a.sentence.seq) for a in log if isinstance(a, Play)]


def test_in_order_arrival_plays_in_order_and_finishes():
    q = PlaybackQueue()
    msgs = [m for s in range(3) for m in sentence_messages("a", s, last=s == 2)]
    log = deliver(q, msgs)
    assert played(log) == [("a", 0), ("a", 1), ("a", 2)]
    assert isinstance(log[-1], Finished) and q.active_request is None


def test_out_of_order_waits_for_the_missing_sentence():
    q = PlaybackQueue()
    s0, s1, s2 = (sentence_messages("a", s, last=s == 2) for s in range(3))
    log = deliver(q, s2 + s1)
    assert played(log) == []
    log += deliver(q, s0)
    assert played(log) == [("a", 0), ("a", 1), ("a", 2)]


def test_duplicates_play_once():
    q = PlaybackQueue()
    s0 = sentence_messages("a", 0, last=False)
    s1 = sentence_messages("a", 1, last=True)
    log = deliver(q, s0 + s0 + s1 + s0 + s1)
    assert played(log) == [("a", 0), ("a", 1)]


def test_gap_is_skipped_after_the_timeout_only():
    q = PlaybackQueue(gap_timeout_s=3.0)
    log = deliver(q, sentence_messages("a", 0, last=False) + sentence_messages("a", 2, last=True))
    assert played(log) == [("a", 0)]
    assert q.wake_at() is not None
    _now[0] = q.wake_at() - 0.01
    assert q.next(_now[0]) == []
    log = settle(q, log)
    assert [(a.seq, a.reason) for a in log if isinstance(a, Skip)] == [(1, "gap timeout")]
    assert played(log) == [("a", 0), ("a", 2)]


def test_a_failed_sentence_is_skipped_at_once():
    q = PlaybackQueue(gap_timeout_s=3.0)
    log = deliver(q, sentence_messages("a", 0, last=False) + sentence_messages("a", 2, last=True))
    log += run(q, q.fail("a", 1, False, _now[0]))
    assert [(a.seq, a.reason) for a in log if isinstance(a, Skip)] == [(1, "synthesis failed")]
    assert played(log) == [("a", 0), ("a", 2)]


def test_newer_request_interrupts_and_old_audio_is_ignored():
    q = PlaybackQueue()
    log = deliver(q, sentence_messages("a", 0, last=False))
    q_play = played(log)
    assert q_play == [("a", 0)]
    log2 = deliver(q, sentence_messages("b", 0, last=False) + sentence_messages("a", 1, last=True))
    assert any(isinstance(a, Interrupted) and a.request_id == "a" for a in log2)
    assert played(log2) == [("b", 0)]


def test_cancel_stops_and_drops_the_rest():
    q = PlaybackQueue()
    deliver(q, sentence_messages("a", 0, last=False))
    assert q.cancel(None, 1.0) == [Interrupted("a", "cancelled")]
    assert deliver(q, sentence_messages("a", 1, last=True)) == []
    assert q.active_request is None


def test_no_last_and_nothing_more_gives_up_after_the_timeout():
    q = PlaybackQueue(gap_timeout_s=1.0)
    log = settle(q, deliver(q, sentence_messages("a", 0, last=False)))
    assert isinstance(log[-1], Finished) and log[-1].reason == "gave up waiting"


@st.composite
def scenarios(draw):
    n_requests = draw(st.integers(1, 3))
    requests = []
    for r in range(n_requests):
        n = draw(st.integers(1, 5))
        drops = draw(st.sets(st.integers(0, n - 1), max_size=n - 1)) if r == n_requests - 1 else set()
        limit = draw(st.sampled_from([100_000, 600]))  # 600 bytes forces several parts per sentence
        requests.append((f"{r:08x}-0000-7000-8000-000000000000", n, drops, limit))  # UUIDv7: ordered by time
    messages = []
    for rid, n, drops, limit in requests:
        for seq in range(n):
            if seq not in drops:
                messages += sentence_messages(rid, seq, last=seq == n - 1, size=draw(st.integers(1, 900)),
                                              parts_limit=limit)
    dups = draw(st.lists(st.sampled_from(messages), max_size=10))
    order = draw(st.permutations(messages + dups))
    return requests, order


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_any_shuffle_plays_the_newest_request_once_in_order(scenario):
    requests, order = scenario
    q = PlaybackQueue(gap_timeout_s=3.0)
    log = settle(q, deliver(q, order))
    plays = played(log)
    newest, n, drops, _ = requests[-1]
    # each sentence of the newest request that arrived is played exactly once, in order
    assert [s for r, s in plays if r == newest] == [s for s in range(n) if s not in drops]
    # nothing plays twice, and requests never interleave: once a newer one started, older ones are cut off
    assert len(plays) == len(set(plays))
    assert [r for r, _ in plays] == sorted(r for r, _ in plays)
    for r, _ in plays:
        seqs = [s for rr, s in plays if rr == r]
        assert seqs == sorted(seqs)
    # every missing sentence before the newest request's last delivered one was skipped, not waited on forever
    delivered = [s for s in range(n) if s not in drops]
    skipped = {a.seq for a in log if isinstance(a, Skip) and a.request_id == newest}
    assert {s for s in drops if s < max(delivered)} <= skipped
    assert q.wake_at() is None


def test_a_held_request_plays_nothing_until_released_and_keeps_the_microphone_open():
    rid = new_request_id()
    queue = PlaybackQueue(gap_timeout_s=3.0, hold_limit_s=5.0)
    queue.hold(rid, 0.0)  # the transcript went out before the end of the turn was confirmed
    for m in split_audio(request_id=rid, seq=0, last=True, text="네", audio=b"\0\0" * 160, format="pcm_s16le",
                         sample_rate=16_000):
        queue.add(m, 0.1)
    assert queue.next(1.0) == [] and not queue.speaking  # written, not heard; the person may still go on
    assert queue.wake_at() == 5.0
    queue.release(rid, 1.2)
    assert [type(a) for a in queue.next(1.2)] == [Play] and queue.speaking


def test_a_hold_nobody_settles_lapses_and_a_cancelled_one_is_never_heard():
    def parts(rid: str):
        return split_audio(request_id=rid, seq=0, last=True, text="네", audio=b"\0\0" * 160, format="pcm_s16le",
                           sample_rate=16_000)

    lapsed, withdrawn = new_request_id(), new_request_id()
    queue = PlaybackQueue(hold_limit_s=5.0)
    queue.hold(lapsed, 0.0)
    for m in parts(lapsed):
        queue.add(m, 0.0)
    assert queue.next(4.9) == [] and [type(a) for a in queue.next(5.0)] == [Play]  # the interpreter went away
    other = PlaybackQueue()
    other.hold(withdrawn, 0.0)
    for m in parts(withdrawn):
        other.add(m, 0.0)
    assert other.cancel(withdrawn, 0.5) == [Interrupted(withdrawn, "cancelled")]
    assert other.next(10.0) == [] and not other.held(withdrawn)
