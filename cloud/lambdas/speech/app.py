"""Speech Lambda: the IoT rule's event (one answer sentence + thing) -> Polly audio parts on R/<thing>/audio.

A thin shell: Powertools does logging and metrics; the logic is voicebot.cloud.speech.speak_sentence. No idempotency
store: a duplicate delivery sends the same (requestId, seq) again and the player drops the duplicate.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from voicebot.cloud.aws import speech_deps_from_env
from voicebot.cloud.speech import speak_sentence

logger = Logger()
metrics = Metrics(namespace="voicebot")
deps = speech_deps_from_env()


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(thing=event.get("thing"), request_id=event.get("requestId"), seq=event.get("seq"))
    published = speak_sentence(event, deps)
    metrics.add_metric(name="AudioMessages", unit=MetricUnit.Count, value=published)
    return {"published": published}
