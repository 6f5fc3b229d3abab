"""Chat Lambda: the IoT rule's event (a completed transcript + thing) -> answer sentences on R/<thing>/answer.

A thin shell: Powertools does logging, metrics and idempotency; the logic is voicebot.cloud.chat.answer_transcript.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from voicebot.cloud.aws import chat_deps_from_env, dynamodb_config, require_env
from voicebot.cloud.chat import answer_transcript, describe
from voicebot.cloud.publish import send_error
from voicebot.protocol import Topics

logger = Logger()
metrics = Metrics(namespace="voicebot")
# IoT rules may deliver the same event twice: one answer per (thing, requestId), remembered for an hour.
persistence = DynamoDBPersistenceLayer(table_name=require_env("IDEMPOTENCY_TABLE"), boto_config=dynamodb_config())
idempotency = IdempotencyConfig(event_key_jmespath="[thing, requestId]", expires_after_seconds=3600,
                                raise_on_no_idempotency_key=False)
deps = chat_deps_from_env()


@idempotent_function(data_keyword_argument="event", persistence_store=persistence, config=idempotency)
def answer_once(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return answer(event, context)


def answer(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # The model's deadline and client timeouts come from the time this invocation has left.
    outcome = answer_transcript(event, deps, time_left_s=lambda: context.get_remaining_time_in_millis() / 1000)
    answered[0] = True
    if outcome is None:
        return {"answered": False}
    metrics.add_metric(name="Sentences", unit=MetricUnit.Count, value=len(outcome.sentences))
    if outcome.error:
        metrics.add_metric(name="ModelFailures", unit=MetricUnit.Count, value=1)
    if outcome.store_problems:
        metrics.add_metric(name="StoreFailures", unit=MetricUnit.Count, value=len(outcome.store_problems))
    return {"answered": True, "sentences": len(outcome.sentences), "error": outcome.error}


answered = [False]  # whether this invocation has run the chat (the idempotency store may fail after it did)


@logger.inject_lambda_context(log_event=False)  # events hold what people said: never log them whole
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    metrics.add_metric(name="Transcripts", unit=MetricUnit.Count, value=1)
    logger.append_keys(thing=event.get("thing"), request_id=event.get("requestId"), model=os.environ.get("MODEL_ID"))
    answered[0] = False
    try:
        return answer_once(event=event, context=context)
    except IdempotencyAlreadyInProgressError:
        logger.info("duplicate delivery while the first is still answering; ignored")
        return {"answered": False, "duplicate": True}
    except IdempotencyPersistenceLayerError as exc:
        # The idempotency table is throttled, stalled or failing. A person waiting for an answer matters more than
        # a rare second answer to a redelivered event: answer without it (unless the answer already went out).
        detail = f"idempotency store failed ({describe(exc.__cause__ or exc)[:300]}); answering without it"
        logger.error(detail)
        metrics.add_metric(name="StoreFailures", unit=MetricUnit.Count, value=1)
        thing = event.get("thing")
        if isinstance(thing, str) and thing:
            send_error(deps.publisher, Topics(deps.settings.topic_root, thing), source="chat",
                       request_id=event.get("requestId"), detail=detail)
        if answered[0]:
            return {"answered": True, "idempotency": "failed after the answer"}
        return answer(event, context)
