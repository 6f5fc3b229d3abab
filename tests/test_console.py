"""The conversation console in a real browser (the OS's headless Chromium, driven by Playwright) on the local stack:
a real turn appears as it happens (the partial question, then the final one, the sentences in order, audio that
plays, the latency waterfall), two devices side by side, hostile text shown as text, malformed messages skipped with
a note, a hundred devices kept bounded, and the optional question box."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import Recorder
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import EspeakTts
from voicebot.console.server import Console, serve
from voicebot.console.state import MAX_TURNS
from voicebot.edge.audio import NullSink
from voicebot.edge.player import Player
from voicebot.local.cloud import LocalCloud
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    AnswerMessage,
    Topics,
    TranscriptMessage,
    encode,
    new_request_id,
    now_ms,
)

pytestmark = pytest.mark.slow  # a browser and the whole local stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> 안녕'


class Background:
    """An asyncio loop in a thread, for what runs beside the (synchronous) browser: the console, the players."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn, *args):
        done = threading.Event()
        result = []
        self.loop.call_soon_threadsafe(lambda: (result.append(fn(*args)), done.set()))
        assert done.wait(10)
        return result[0]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def background() -> Iterator[Background]:
    bg = Background()
    yield bg
    bg.close()


def start_console(background: Background, broker, *, allow_ask: bool = False) -> tuple[str, Console, asyncio.Event]:
    transport = Mqtt5Transport(ConnectionSettings(broker=broker.url), client_id=f"console-{new_request_id()[-6:]}")
    console = Console(transport, "voicebot", allow_ask=allow_ask)
    stop = background.call(asyncio.Event)
    ready = threading.Event()
    urls: list[str] = []
    from voicebot.local.broker import free_port

    background.run(serve(console, "127.0.0.1", free_port(), stop,
                         on_ready=lambda url: (urls.append(url), ready.set())))
    assert ready.wait(10)
    console.transport_for_test = transport  # (closed by the test)
    return urls[0], console, stop


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def say(device: Mqtt5Transport, thing: str, text: str, *, partial: str | None = None) -> str:
    rid = new_request_id()
    topics = Topics("voicebot", thing)
    if partial:
        device.publish(topics.transcript, encode(TranscriptMessage(request_id=rid, state="proceeding", text=partial)),
                       QOS_AT_LEAST_ONCE).result(5)
    device.publish(topics.transcript, encode(TranscriptMessage(request_id=rid, state="completed", text=text,
                                                               speech_end_ts=now_ms())), QOS_AT_LEAST_ONCE).result(5)
    return rid


def test_a_real_turn_on_two_devices_appears_live_and_plays(broker, connect, background, browser, tmp_path):
    url, console, stop = start_console(background, broker)
    players_stop = background.call(asyncio.Event)
    players = [Player(connect(f"player-{t}"), Topics("voicebot", t), NullSink(realtime=False)) for t in ("pi-a", "pi-b")]
    for player in players:
        background.run(player.run(players_stop))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#connection.live")
    device = connect("device")
    with LocalCloud(broker.url, model=LoopbackChatModel(), history=SqliteHistory(tmp_path / "h.sqlite"),
                    tts=EspeakTts()):
        # the partial question first: it shows, in place, before the final one replaces it
        topics = Topics("voicebot", "pi-a")
        rid = new_request_id()
        device.publish(topics.transcript, encode(TranscriptMessage(request_id=rid, state="proceeding",
                                                                   text="오늘 서울")), QOS_AT_LEAST_ONCE).result(5)
        page.wait_for_selector('section[data-thing="pi-a"] .q.partial')
        assert page.inner_text(f'[data-request="{rid}"] .q') == "오늘 서울"
        device.publish(topics.transcript, encode(TranscriptMessage(request_id=rid, state="completed",
                                                                   text="오늘 서울 날씨 어때요?",
                                                                   speech_end_ts=now_ms())),
                       QOS_AT_LEAST_ONCE).result(5)
        hostile = say(device, "pi-b", HOSTILE)
        page.wait_for_selector(f'[data-request="{rid}"].answered')
        page.wait_for_selector(f'[data-request="{hostile}"].answered')
    question = page.inner_text(f'[data-request="{rid}"] .q')
    assert question == "오늘 서울 날씨 어때요?"
    seqs = page.eval_on_selector_all(f'[data-request="{rid}"] .a .s', "ns => ns.map(n => Number(n.dataset.seq))")
    assert len(seqs) >= 2 and seqs == sorted(seqs)  # the sentences, in order
    # the audio of a sentence plays in the browser: its duration is known once loaded
    duration = page.evaluate(f"""async () => {{
        const audio = document.querySelector('[data-request="{rid}"] .a .s audio');
        audio.preload = "auto"; audio.load();
        await new Promise((ok, fail) => {{ audio.onloadedmetadata = ok; audio.onerror = fail; }});
        await audio.play(); return audio.duration; }}""")
    assert duration > 0.3
    bars = page.eval_on_selector_all(f'[data-request="{rid}"] svg.waterfall rect', "ns => ns.map(n => n.dataset.stage)")
    assert bars == ["transcript", "first_sentence", "first_audio", "playing"]
    assert page.locator("section.device").count() == 2  # side by side
    # hostile text is text: shown literally, never run
    assert HOSTILE in page.inner_text(f'[data-request="{hostile}"] .q')
    assert page.evaluate("window.pwned") is None and page.locator("img").count() == 0
    assert not errors
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    background.call(players_stop.set)
    background.call(stop.set)
    console.transport_for_test.close()


def test_a_hundred_devices_stay_bounded_and_malformed_messages_are_skipped_with_a_note(broker, connect, background,
                                                                                         browser):
    url, console, stop = start_console(background, broker)
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#connection.live")
    device = connect("fleet")
    for n in range(10):
        for i in range(100):
            thing, rid = f"pi-{i:03d}", new_request_id()
            topics = Topics("voicebot", thing)
            device.publish(topics.transcript, encode(TranscriptMessage(request_id=rid, state="completed",
                                                                       text=f"질문 {n}")), 0)
            device.publish(topics.answer, encode(AnswerMessage(request_id=rid, seq=0, text=f"대답 {n}", last=True)), 0)
    for junk in (b"{not json", b'{"v": 99}', json.dumps({"v": 1, "ts": 1, "x": "y" * 10}).encode()):
        device.publish("voicebot/pi-000/transcript", junk, QOS_AT_LEAST_ONCE).result(5)
    device.publish("voicebot/pi-000/transcript", encode(TranscriptMessage(
        request_id=new_request_id(), state="completed", text="마지막 질문")), QOS_AT_LEAST_ONCE).result(5)
    # (selectors, not wait_for_function: the page's Content-Security-Policy forbids the eval that polling uses)
    page.wait_for_selector("section.device:nth-of-type(100)", timeout=30_000)
    page.wait_for_selector('section[data-thing="pi-000"] .q:has-text("마지막 질문")', timeout=30_000)
    assert "malformed message(s) skipped" in page.inner_text("#notes")
    turns = page.eval_on_selector_all("section.device", "ns => ns.map(n => n.querySelectorAll('.turn').length)")
    assert max(turns) <= MAX_TURNS and min(turns) >= 10
    assert page.evaluate("1 + 1") == 2  # the page still answers
    assert all(len(d.turns) <= MAX_TURNS for d in console.state.devices.values())
    background.call(stop.set)
    console.transport_for_test.close()


def test_asking_from_the_page_is_off_unless_allowed(broker, connect, background, browser):
    url, console, stop = start_console(background, broker)
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#connection.live")
    assert page.is_visible("#ask-off")
    refused = page.evaluate("""async () => (await fetch('ask', {method: 'POST', headers: {'Content-Type':
        'application/json'}, body: JSON.stringify({thing: 'pi-a', text: '안녕'})})).status""")
    assert refused == 403
    background.call(stop.set)
    console.transport_for_test.close()

    url, console, stop = start_console(background, broker, allow_ask=True)
    asked = Recorder()
    connect("observer").subscribe("voicebot/pi-ask/transcript", 1, asked)
    say(connect("device"), "pi-ask", "첫 질문")  # the device appears on the page
    page.goto(url)
    page.wait_for_selector('section[data-thing="pi-ask"] form.ask input')
    assert not page.is_visible("#ask-off")
    page.fill('section[data-thing="pi-ask"] form.ask input', "내일 날씨는요?")
    page.click('section[data-thing="pi-ask"] form.ask button')
    messages = asked.wait_for(lambda ms: any("내일 날씨는요?".encode() in p for _, p in ms), 10)
    sent = [json.loads(p) for _, p in messages if "내일 날씨는요?".encode() in p][0]
    assert sent["state"] == "completed" and "thing" not in sent  # the device comes from the topic, as always
    background.call(stop.set)
    console.transport_for_test.close()
