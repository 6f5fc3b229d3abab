"""Chat: a finished utterance in, the answer out sentence by sentence while the model is still writing.

``answer_transcript`` is the whole logic, a plain function: the Lambda handler (cloud/lambdas/chat) and the local rules
engine both call it with the event an IoT rule delivers (the transcript's fields plus ``thing`` from ``topic(2)``).
"""

from __future__ import annotations

import logging
import textwrap
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from voicebot.cloud.history import GuardedHistory, HistoryStore, Turn
from voicebot.cloud.llm import SYSTEM_PROMPT, stream_until
from voicebot.cloud.publish import Publisher, send, send_error
from voicebot.protocol import (
    DEFAULT_TOPIC_ROOT,
    MAX_SENTENCE_CHARS,
    MAX_TRANSCRIPT_CHARS,
    AnswerMessage,
    ChatEvent,
    ProtocolError,
    Topics,
    decode,
    now_ms,
)
from voicebot.sentences import SentenceSplitter, spoken_length

log = logging.getLogger(__name__)

APOLOGY = "죄송해요, 지금은 답변을 드리기 어려워요. 잠시 후에 다시 말씀해 주세요."
TOO_LONG = "질문이 너무 길어요. 조금 짧게 다시 말씀해 주세요."

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "{system}"), MessagesPlaceholder("history"), ("human", "{question}")]
)


@dataclass(frozen=True)
class ChatSettings:
    topic_root: str = DEFAULT_TOPIC_ROOT
    history_turns: int = 6
    """Earlier turns the model sees (one DynamoDB query / SQLite select, bounded)."""
    max_question_chars: int = MAX_TRANSCRIPT_CHARS
    deadline_s: float = 25.0
    """Give up on the model after this long and apologise instead (the device must always say something)."""
    reserve_s: float = 6.0
    """Time kept back from the Lambda's remaining time for the apology, the error event and the history write."""
    system_prompt: str = SYSTEM_PROMPT
    first_clause_chars: int = 10
    """The answer's first piece may end at a comma or a Korean connective ending (맑고, 부는데, 와서) after this many
    letters, so the device starts speaking before the first sentence is complete; 0: sentences only. Ten Hangul
    letters are about twelve characters with spaces and 1.5 s of speech: long enough to cover what the rest of the
    sentence needs (model and TTS), so no gap follows the first piece."""
    store_call_s: float = 4.0
    """The longest one history-store call can take with its client's timeouts and retries (DynamoDB: 2 attempts of
    1 s connect + 1 s read, plus backoff); no call starts with less than this left before the reserve."""
    stream_sentences: bool = True
    """False = the source blog's whole-answer behaviour (wait for the full answer, one message): the benchmark's
    baseline. Never what a device should use."""


@dataclass
class ChatDeps:
    model: BaseChatModel | None
    """The model, when its client timeouts need not follow the time left (tests, the local stack)."""
    history: HistoryStore
    publisher: Publisher
    settings: ChatSettings = field(default_factory=ChatSettings)
    model_for_budget: Callable[[float], BaseChatModel] | None = None
    """In Lambda: a model whose client gives up within the given seconds (used when ``model`` is None)."""

    def model_within(self, budget_s: float) -> BaseChatModel:
        if self.model is not None:
            return self.model
        if self.model_for_budget is None:
            raise RuntimeError("ChatDeps needs a model or model_for_budget")
        return self.model_for_budget(budget_s)


@dataclass
class ChatOutcome:
    thing: str
    request_id: str
    sentences: list[str]
    error: str | None = None
    store_problems: list[str] = field(default_factory=list)
    """History-store failures this turn (answered regardless; each also went out as an error event)."""


def build_messages(system_prompt: str, history: list[Turn], question: str) -> list[BaseMessage]:
    past: list[BaseMessage] = []
    for turn in history:
        past += [HumanMessage(turn.question), AIMessage(turn.answer)]
    return PROMPT.format_messages(system=system_prompt, history=past, question=question)


class PublishError(RuntimeError):
    """An answer message could not be published (the broker or IoT Core is unreachable right now)."""


def describe(exc: BaseException) -> str:
    """One line naming the failure, never empty (a timeout's message often is)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AnswerStream:
    """Publishes answer sentences for one request with ``seq`` 0..n; the final one carries ``last``.

    A sentence with nothing to say (punctuation only) is not sent; a failed publish raises ``PublishError`` and
    leaves ``seq`` where it was, so a retry takes the same number and the device sees no gap.
    """

    def __init__(self, publisher: Publisher, topics: Topics, request_id: str) -> None:
        self.publisher = publisher
        self.topics = topics
        self.request_id = request_id
        self.seq = 0
        self.sentences: list[str] = []
        self.closed = False

    def send(self, sentence: str, *, last: bool = False) -> None:
        if not spoken_length(sentence):
            if not last:
                return
            sentence = ""
        pieces = textwrap.wrap(sentence, MAX_SENTENCE_CHARS) or [""]
        for i, piece in enumerate(pieces):
            is_last = last and i == len(pieces) - 1
            try:
                send(self.publisher, self.topics.answer,
                     AnswerMessage(request_id=self.request_id, seq=self.seq, text=piece, last=is_last))
            except Exception as exc:
                raise PublishError(f"could not publish answer seq {self.seq}: {describe(exc)}") from exc
            self.seq += 1
            if piece:
                self.sentences.append(piece)
        self.closed = last

    def close(self) -> None:
        """End the answer when its final sentence already went out without ``last`` (an empty closing message)."""
        if not self.closed:
            self.send("", last=True)


def apologise(deps: ChatDeps, out: AnswerStream, *, detail: str, until: float) -> None:
    """Report the failure and say sorry. While the publisher is down, keep trying until ``until`` (the turn's end on
    the monotonic clock): the device hears the apology as soon as the broker is reachable again."""
    reported = False
    delay = 0.25
    while True:
        reported = reported or send_error(deps.publisher, out.topics, source="chat", request_id=out.request_id,
                                          detail=detail)
        if not out.closed:
            try:
                out.send(APOLOGY, last=True)
            except PublishError as exc:
                if delay == 0.25:
                    log.warning("chat: the apology for %s cannot be published yet (%s); retrying", out.request_id, exc)
        if reported and out.closed:
            return
        left = until - time.monotonic()
        if left <= 0:
            log.error("chat: the turn of %s ended before %s could be published", out.request_id,
                      "the error event" if out.closed else "the apology")
            return
        time.sleep(min(delay, left))  # a backoff between attempts at a publisher that is down
        delay = min(delay * 2, 2.0)


def superseded(history: HistoryStore | GuardedHistory, thing: str, request_id: str) -> bool:
    """The device asked something else since this answer started."""
    latest = history.latest_request(thing)
    return bool(latest) and latest != request_id


#: A store call never starts when less than this would be left after it: the apology's publish needs it.
STORE_RESERVE_S = 2.0


def report_store_problems(deps: ChatDeps, topics: Topics, request_id: str, history: GuardedHistory) -> None:
    """Each store failure of this turn, once, as an ``error`` event (the person hears the answer regardless)."""
    while len(history.problems) > history.reported:
        send_error(deps.publisher, topics, source="chat", request_id=request_id,
                   detail=history.problems[history.reported])
        history.reported += 1


def answer_budget(settings: ChatSettings, time_left_s: Callable[[], float] | None) -> float:
    """Seconds the model may take: the configured deadline, cut to what the Lambda has left minus the reserve."""
    budget = settings.deadline_s
    if time_left_s is not None:
        budget = min(budget, time_left_s() - settings.reserve_s)
    return max(budget, 0.0)


def answer_transcript(event: Mapping[str, Any], deps: ChatDeps, *,
                      time_left_s: Callable[[], float] | None = None) -> ChatOutcome | None:
    """Answer one completed transcript. Never raises for bad input or a failing model: it reports and apologises.

    ``time_left_s`` is the Lambda's remaining time (``context.get_remaining_time_in_millis() / 1000``): the model's
    deadline and its client's timeouts come from it, so the apology always goes out before the Lambda is stopped.
    """
    settings = deps.settings
    budget = answer_budget(settings, time_left_s)
    deadline = time.monotonic() + budget
    thing = event.get("thing")
    if not isinstance(thing, str) or not thing:
        log.error("chat: event has no thing from topic(2); is the rule SQL right? (dropped)")
        return None
    topics = Topics(settings.topic_root, thing)
    raw_id = event.get("requestId")
    request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 64 else None
    try:
        message = decode(ChatEvent, dict(event))
    except ProtocolError as exc:
        log.warning("chat: bad transcript from %s: %s", thing, exc)
        send_error(deps.publisher, topics, source="chat", request_id=request_id, detail=f"bad transcript: {exc}")
        text = event.get("text")
        if request_id and isinstance(text, str) and len(text) > settings.max_question_chars:
            AnswerStream(deps.publisher, topics, request_id).send(TOO_LONG, last=True)
        return None

    question = message.text.strip()
    out = AnswerStream(deps.publisher, topics, message.request_id)
    if not question:
        log.info("chat: empty transcript %s from %s; nothing to answer", message.request_id, thing)
        send_error(deps.publisher, topics, source="chat", request_id=message.request_id, detail="empty transcript")
        return None
    if len(question) > settings.max_question_chars:
        log.warning("chat: question of %d characters from %s refused", len(question), thing)
        send_error(deps.publisher, topics, source="chat", request_id=message.request_id,
                   detail=f"question of {len(question)} characters is over the {settings.max_question_chars} limit")
        out.send(TOO_LONG, last=True)
        return ChatOutcome(thing, message.request_id, out.sentences, "question too long")

    # At-least-once delivery and concurrent handlers: one atomic write decides whether this request is answered.
    # Every store call goes through the guard: a throttled, stalled or failing table never silences the device.
    history = GuardedHistory(deps.history, time_left_s=time_left_s, call_budget_s=settings.store_call_s,
                             reserve_s=STORE_RESERVE_S)
    taken = history.take_request(thing, message.request_id)
    if taken == "duplicate":
        log.info("chat: %s from %s was delivered again; answered once already", message.request_id, thing)
        return ChatOutcome(thing, message.request_id, [], "duplicate")
    if taken == "older":  # AWS delivers rule events in any order
        log.info("chat: %s from %s arrived after a newer request; not answered", message.request_id, thing)
        return ChatOutcome(thing, message.request_id, [], "superseded")

    if message.replaces and history.forget(thing, message.replaces):  # its early answer was never heard
        log.info("chat: %s replaces %s; that turn left the history", message.request_id, message.replaces)
    messages = build_messages(settings.system_prompt, history.recent(thing, settings.history_turns), question)
    report_store_problems(deps, topics, message.request_id, history)
    splitter = SentenceSplitter(first_clause_chars=settings.first_clause_chars)
    try:
        held: list[str] = []  # baseline only: the whole answer, spoken at the end
        model = deps.model_within(deadline - time.monotonic())
        with closing(stream_until(model, messages, deadline)) as chunks:
            for sentence in (s for text in chunks for s in splitter.feed(text)):
                if not settings.stream_sentences:
                    held.append(sentence)
                    continue
                if out.seq and superseded(history, thing, message.request_id):  # (the first one goes out unchecked)
                    # The person asked something else: stop paying for an answer nobody will hear.
                    log.info("chat: %s from %s superseded mid-answer; stopped", message.request_id, thing)
                    return ChatOutcome(thing, message.request_id, out.sentences, "superseded")
                out.send(sentence)  # the moment it is complete: the device starts speaking now
        rest = held + splitter.flush()
        if not settings.stream_sentences and rest:
            rest = [" ".join(rest)]
        for i, sentence in enumerate(rest):
            out.send(sentence, last=i == len(rest) - 1)
        if not out.sentences:
            raise RuntimeError("model returned no speakable text")
        out.close()
    except Exception as exc:  # any failure: report it, then apologise so the device still says something
        what = "publishing failed" if isinstance(exc, PublishError) else "model failed"
        log.error("chat: %s for %s/%s: %s", what, thing, message.request_id, describe(exc))
        if not out.closed:  # (an answer that went out whole needs no apology)
            apologise(deps, out, detail=f"{what}: {describe(exc)}",
                      until=deadline + max(0.0, settings.reserve_s - 5.0))
        report_store_problems(deps, topics, message.request_id, history)
        return ChatOutcome(thing, message.request_id, out.sentences, describe(exc))

    if superseded(history, thing, message.request_id):  # as in the loop: an answer overtaken while written is not kept
        log.info("chat: %s from %s superseded as it ended; not kept in the history", message.request_id, thing)
        return ChatOutcome(thing, message.request_id, out.sentences, "superseded")
    history.append(thing, Turn(message.request_id, question, " ".join(out.sentences), now_ms()))
    report_store_problems(deps, topics, message.request_id, history)
    return ChatOutcome(thing, message.request_id, out.sentences, store_problems=history.problems)
