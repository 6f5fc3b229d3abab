"""The language model slot, behind LangChain's chat-model interface.

* ``bedrock``: Claude Haiku 4.5 on Amazon Bedrock through ``langchain-aws`` (``ChatBedrockConverse``), streaming.
* ``llamacpp``: a local GGUF file through llama.cpp (optional extra ``voicebot[llamacpp]``).
* ``loopback``: an offline responder that streams a short Korean reply built from the question and says plainly that
  it is the offline responder. ``auto`` picks Bedrock when AWS credentials exist, else a configured GGUF, else this.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
DEFAULT_REGION = "ap-northeast-2"
SYSTEM_PROMPT = (
    "다음은 Human과 Assistant의 친근한 대화입니다. 빠른 대화를 위해 답변은 짧고 정확하게 핵심만 얘기합니다. "
    "필요시 2문장으로 답변할 수 있으나 가능한 1문장으로 답변합니다."
)


@dataclass(frozen=True)
class LlmSettings:
    backend: str = "auto"
    """auto | bedrock | llamacpp | loopback"""
    model_id: str = DEFAULT_MODEL_ID
    region: str = DEFAULT_REGION
    temperature: float = 0.3
    max_tokens: int = 300
    """Answers are one or two spoken sentences; a small cap keeps latency and cost down."""
    timeout_s: float = 20.0
    gguf_path: str | None = None

    @classmethod
    def from_env(cls) -> LlmSettings:
        return cls(
            backend=os.environ.get("VOICEBOT_LLM", "auto"),
            model_id=os.environ.get("MODEL_ID", DEFAULT_MODEL_ID),
            region=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION)),
            gguf_path=os.environ.get("VOICEBOT_GGUF") or None,
        )


_TOKEN = re.compile(r"\S+\s*|\s+")


class LoopbackChatModel(BaseChatModel):
    """Offline responder: streams a reply word by word, like a real model would token by token.

    With ``answer`` set it streams that fixed text (the benchmark's synthetic model); otherwise it builds a short,
    honest reply from the question and the history it was given.
    """

    answer: str | None = None
    first_token_delay_s: float = 0.0
    tokens_per_s: float = 0.0
    token_chars: int = 0
    """0: one token per word; N: tokens of N characters (closer to how Claude tokenizes Korean)."""

    @property
    def _llm_type(self) -> str:
        return "voicebot-loopback"

    def reply_for(self, messages: list[BaseMessage]) -> str:
        if self.answer is not None:
            return self.answer
        questions = [m.content for m in messages if isinstance(m, HumanMessage)]
        question = str(questions[-1]).strip() if questions else ""
        parts = [f"저는 오프라인 응답기입니다. “{question}”라고 말씀하셨어요."]
        if len(questions) > 1:
            parts.append(f"앞에서는 “{str(questions[-2]).strip()}”에 대해 이야기했지요.")
        parts.append("클라우드 모델을 연결하면 제대로 답해 드릴게요.")
        return " ".join(parts)

    def _stream(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text = self.reply_for(messages)
        if self.first_token_delay_s:
            time.sleep(self.first_token_delay_s)  # simulated time-to-first-token
        tokens = ([text[i : i + self.token_chars] for i in range(0, len(text), self.token_chars)]
                  if self.token_chars else _TOKEN.findall(text))
        for i, token in enumerate(tokens):
            if self.tokens_per_s and i:
                time.sleep(1.0 / self.tokens_per_s)  # simulated generation speed
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        text = "".join(c.text for c in self._stream(messages, stop, run_manager, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class ModelTimeout(TimeoutError):
    """The model said nothing (more) before the answer's deadline."""


def stream_until(model: BaseChatModel, messages: list[BaseMessage], deadline: float) -> Iterator[str]:
    """The model's streamed text, never waiting past ``deadline`` (``time.monotonic()``) for the first token.

    Waiting for the first token is where a model endpoint hangs (a cold profile, a black-holed connection), and a
    hung HTTP read cannot be interrupted: so the first chunk is fetched by a helper thread and waited for with a
    timeout. The rest streams in the caller's thread, exactly as the model produces it (no hand-off per token: a
    hundred concurrent answers in one process must not pay thread switches on every token); the deadline is checked
    between chunks, and a stall between chunks is bounded by the client's read timeout (``MAX_READ_WAIT_S``).
    """
    chunks = model.stream(messages)
    got: list[Any] = []
    arrived = threading.Event()

    def first() -> None:
        try:
            got.append(("text", next(chunks).text))
        except StopIteration:
            got.append(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as is
            got.append(("error", exc))
        arrived.set()

    threading.Thread(target=first, name="model-first-token", daemon=True).start()
    if not arrived.wait(max(0.0, deadline - time.monotonic())):
        raise ModelTimeout("the model did not answer in time")  # (the helper ends when the stuck read gives up)
    kind, value = got[0]
    if kind == "error":
        raise value
    if kind == "end":
        return
    try:
        yield value
        for chunk in chunks:
            if time.monotonic() > deadline:
                raise ModelTimeout("the model did not finish in time")
            yield chunk.text
    finally:
        chunks.close()  # (the helper is done with it: it handed over the first chunk)


#: Longest silence a model stream may keep between two reads (botocore's read timeout): a stall mid-answer is then
#: noticed within the chat's reserve time.
MAX_READ_WAIT_S = 5.0


def bedrock_model(settings: LlmSettings, *, client: Any = None) -> BaseChatModel:
    """Claude through Bedrock's ConverseStream. ``settings.timeout_s`` is the answer's whole budget: no read waits
    longer (nor longer than ``MAX_READ_WAIT_S``), and a retry (throttling, a dropped connection) happens only once."""
    from botocore.config import Config
    from langchain_aws import ChatBedrockConverse

    budget = max(1.0, settings.timeout_s)
    config = Config(
        # total_max_attempts counts the first try (botocore's max_attempts counts retries only)
        retries={"mode": "adaptive", "total_max_attempts": 2},
        connect_timeout=min(3.0, budget), read_timeout=min(budget, MAX_READ_WAIT_S),
    )
    kwargs: dict[str, Any] = dict(
        model=settings.model_id, region_name=settings.region, temperature=settings.temperature,
        max_tokens=settings.max_tokens, disable_streaming=False, config=config,
    )
    if client is not None:
        kwargs["client"] = client
    return ChatBedrockConverse(**kwargs)


class BedrockModels:
    """Bedrock chat models whose client timeouts fit the time an invocation has left, per whole second of budget.

    A Lambda container sees nearly the same budget on every invocation, so this holds one or two models.
    """

    def __init__(self, settings: LlmSettings, *, keep: int = 4) -> None:
        self.settings = settings
        self.keep = keep
        self._models: dict[int, BaseChatModel] = {}

    def __len__(self) -> int:
        return len(self._models)

    def __call__(self, budget_s: float) -> BaseChatModel:
        seconds = max(1, math.floor(budget_s))
        model = self._models.get(seconds)
        if model is None:
            if len(self._models) >= self.keep:
                self._models.pop(next(iter(self._models)))
            model = self._models[seconds] = bedrock_model(replace(self.settings, timeout_s=seconds))
        return model


class BackendError(RuntimeError):
    """A chosen backend cannot be used here (a missing extra, model file or credentials): one line says how."""


def llamacpp_model(settings: LlmSettings) -> BaseChatModel:
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError as exc:
        raise BackendError("--llm llamacpp needs the llamacpp extra: .venv/bin/pip install 'voicebot[llamacpp]', and "
                           "VOICEBOT_GGUF=/path/model.gguf") from exc
    if not settings.gguf_path or not os.path.exists(settings.gguf_path):
        raise BackendError(f"--llm llamacpp: GGUF model file not found: {settings.gguf_path!r} (set "
                           "VOICEBOT_GGUF=/path/model.gguf)")
    return ChatLlamaCpp(model_path=settings.gguf_path, temperature=settings.temperature,
                        max_tokens=settings.max_tokens, streaming=True, verbose=False)


def aws_credentials_available() -> bool:
    try:
        import boto3

        return boto3.Session().get_credentials() is not None
    except Exception:
        return False


def build_chat_model(settings: LlmSettings) -> tuple[BaseChatModel, str]:
    """The chat model for these settings and a short name of the backend that was chosen."""
    backend = settings.backend
    if backend == "auto":
        if aws_credentials_available():
            backend = "bedrock"
        elif settings.gguf_path:
            backend = "llamacpp"
        else:
            backend = "loopback"
    if backend == "bedrock":
        if not aws_credentials_available():
            raise BackendError("--llm bedrock needs AWS credentials (aws configure, or AWS_PROFILE / "
                               "AWS_ACCESS_KEY_ID) and a region where the model is enabled (AWS_REGION)")
        return bedrock_model(settings), f"bedrock:{settings.model_id}"
    if backend == "llamacpp":
        return llamacpp_model(settings), f"llamacpp:{os.path.basename(settings.gguf_path or '')}"
    if backend == "loopback":
        return LoopbackChatModel(), "loopback (offline responder)"
    raise ValueError(f"unknown LLM backend {backend!r} (auto, bedrock, llamacpp or loopback)")
