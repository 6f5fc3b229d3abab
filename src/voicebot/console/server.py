"""`voicebot console`: one process subscribes to every device's topics; browsers get the conversations from it as
server-sent events. No credential or certificate ever reaches a browser, and it listens on localhost unless told
otherwise. The page (static/, no build step, nothing from the internet) renders every text as text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from voicebot.console.state import ConsoleState
from voicebot.messaging import Transport, handoff_to_loop, send
from voicebot.protocol import (
    MAX_TRANSCRIPT_CHARS,
    QOS_AT_LEAST_ONCE,
    THING_NAME,
    Topics,
    TranscriptMessage,
    encode,
    everything_filter,
    new_request_id,
    now_ms,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
#: Updates of one device reach the browsers at most this often (a busy fleet must not flood the page).
COALESCE_S = 0.1
#: Messages a slow browser may be behind before it is given a fresh snapshot instead.
CLIENT_BACKLOG = 500


class Console:
    def __init__(self, transport: Transport, topic_root: str, *, allow_ask: bool = False,
                 clock: Callable[[], int] = now_ms) -> None:
        self.transport = transport
        self.topic_root = topic_root
        self.allow_ask = allow_ask
        self.clock = clock
        self.state = ConsoleState()
        self.clients: set[asyncio.Queue[str | None]] = set()
        self._dirty: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.received = 0

    # -- MQTT side ---------------------------------------------------------------------------------------------------

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport.subscribe(everything_filter(self.topic_root), QOS_AT_LEAST_ONCE, handoff_to_loop(loop, self._inbox))
        while True:
            topic, payload = await self._inbox.get()
            self.on_message(topic, payload)

    def on_message(self, topic: str, payload: bytes) -> None:
        self.received += 1
        skipped = self.state.skipped
        thing = self.state.on_message(topic, payload, self.clock())
        if thing is not None:
            self._dirty.add(thing)
            if self._flush is None:
                self._flush = asyncio.get_running_loop().call_later(COALESCE_S, self._send_dirty)
        elif self.state.skipped != skipped:
            log.info("console: skipped a malformed message (%s)", self.state.last_skip)
            self._broadcast("note", {"skipped": self.state.skipped, "lastSkip": self.state.last_skip})

    def _send_dirty(self) -> None:
        self._flush = None
        dirty, self._dirty = self._dirty, set()
        for thing in dirty:
            device = self.state.devices.get(thing)
            if device is not None:
                self._broadcast("device", device.view())

    def _broadcast(self, kind: str, data: Any) -> None:
        line = f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        for queue in list(self.clients):
            if queue.qsize() >= CLIENT_BACKLOG:  # a browser that cannot keep up starts again from a snapshot
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(self._snapshot())
            else:
                queue.put_nowait(line)

    def _snapshot(self) -> str:
        data = {**self.state.view(), "allowAsk": self.allow_ask}
        return f"event: snapshot\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    # -- HTTP side ---------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/events", self.events)
        app.router.add_get("/audio/{thing}/{rid}", self.audio)
        app.router.add_get("/audio/{thing}/{rid}/{seq}", self.audio)
        app.router.add_post("/ask", self.ask)
        app.router.add_static("/static/", STATIC)
        return app

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": "default-src 'self'; media-src 'self'; style-src 'self'; script-src 'self'"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        queue.put_nowait(self._snapshot())
        self.clients.add(queue)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    line = ": keep-alive\n\n"
                if line is None:  # the console stops
                    break
                await response.write(line.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(queue)
        return response

    async def audio(self, request: web.Request) -> web.Response:
        seq = request.match_info.get("seq")
        found = self.state.audio(request.match_info["thing"], request.match_info["rid"],
                                 int(seq) if seq and seq.isdigit() else None)
        if found is None:
            raise web.HTTPNotFound(text="no such audio")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    async def ask(self, request: web.Request) -> web.Response:
        if not self.allow_ask:
            raise web.HTTPForbidden(text="asking is off: start the console with --allow-ask")
        try:
            body = await request.json()
            thing, text = str(body["thing"]), str(body["text"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(text="send {thing, text}") from exc
        if not THING_NAME.match(thing) or not text or len(text) > MAX_TRANSCRIPT_CHARS:
            raise web.HTTPBadRequest(text="a thing name and a question of at most "
                                          f"{MAX_TRANSCRIPT_CHARS} characters")
        message = TranscriptMessage(request_id=new_request_id(), state="completed", text=text, lang="ko-KR",
                                    speech_end_ts=now_ms())
        await send(self.transport, Topics(self.topic_root, thing).transcript, encode(message), QOS_AT_LEAST_ONCE)
        return web.json_response({"requestId": message.request_id})


async def serve(console: Console, host: str, port: int, stop: asyncio.Event,
                on_ready: Callable[[str], None] | None = None) -> None:
    runner = web.AppRunner(console.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    url = f"http://{host}:{port}"
    if on_ready:
        on_ready(url)
    listening = asyncio.create_task(console.listen())
    try:
        await stop.wait()
    finally:
        for queue in list(console.clients):
            queue.put_nowait(None)
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await runner.cleanup()
