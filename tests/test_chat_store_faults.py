"""The chat Lambda when DynamoDB is in trouble: moto's DynamoDB server behind a proxy that throttles, stalls or
fails one table. Whatever the table does, the device gets an ``error`` event and either the answer or the spoken
apology within 10 s, and the handler returns well before its Lambda timeout."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.test_chat_deadline import CountdownContext
from tests.test_cloud_lambdas import ANSWER, REGION, ProbeModel, load_lambda, published, rule_event, transcript
from voicebot.cloud.chat import APOLOGY
from voicebot.local.broker import free_port
from voicebot.local.cloud import default_template
from voicebot.local.rules import load_template

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`

LAMBDA_TIMEOUT_S = 35.0  # the template's ChatFunction Timeout


class FaultyDynamoProxy:
    """Forwards DynamoDB calls to moto, except those naming ``table``: answered 400 throttled, 500, or never."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.table: str | None = None
        self.fault = "none"
        self.hits = 0
        self.release = threading.Event()  # ends the stalls when the test is over
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                table = json.loads(body or b"{}").get("TableName")
                if proxy.table is not None and table == proxy.table and proxy.fault != "none":
                    proxy.hits += 1
                    if proxy.fault == "stall":
                        proxy.release.wait(60)  # a table that never answers (the client's read timeout ends it)
                        return
                    status, kind = ((400, "ProvisionedThroughputExceededException") if proxy.fault == "throttle"
                                    else (500, "InternalServerError"))
                    self._reply(status, json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{kind}",
                                                    "message": f"{kind} (test proxy)"}).encode())
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                upstream.request("POST", self.path, body, {k: v for k, v in self.headers.items()})
                response = upstream.getresponse()
                self._reply(response.status, response.read(), response.getheader("Content-Type"))
                upstream.close()

            def _reply(self, status: int, data: bytes, content_type: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type or "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_dynamo(monkeypatch) -> Iterator[FaultyDynamoProxy]:
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    # The server shares this process's moto backends: start from nothing (tables and publishes of other tests).
    reset = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    reset.request("POST", "/moto-api/reset")
    assert reset.getresponse().status == 200
    reset.close()
    proxy = FaultyDynamoProxy(port)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION, "HISTORY_TABLE": "history", "IDEMPOTENCY_TABLE": "idempotency", "TOPIC_ROOT": "voicebot",
        "POWERTOOLS_METRICS_NAMESPACE": "voicebot", "POWERTOOLS_SERVICE_NAME": "chat",
        "AWS_ENDPOINT_URL_DYNAMODB": proxy.url,  # every DynamoDB call of the Lambda goes through the proxy
        "AWS_ENDPOINT_URL_IOT_DATA_PLANE": f"http://127.0.0.1:{port}",  # publishes go to moto directly
    }.items():
        monkeypatch.setenv(key, value)
    resources = load_template(default_template())["Resources"]
    ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}")
    for logical, name in (("HistoryTable", "history"), ("IdempotencyTable", "idempotency")):
        props = resources[logical]["Properties"]
        ddb.create_table(TableName=name, AttributeDefinitions=props["AttributeDefinitions"],
                         KeySchema=props["KeySchema"], BillingMode=props["BillingMode"])
    yield proxy
    proxy.close()
    moto.stop()


@pytest.mark.parametrize("fault", ["throttle", "stall", "5xx"])
@pytest.mark.parametrize("table", ["history", "idempotency"])
def test_a_table_in_trouble_never_silences_the_device(faulty_dynamo, table, fault):
    app = load_lambda("chat")
    app.deps.model = ProbeModel(seen=[], prompts=[])
    faulty_dynamo.table, faulty_dynamo.fault = table, fault
    context = CountdownContext(seconds=LAMBDA_TIMEOUT_S)
    event = rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("서울 날씨 어때?"))

    started = time.monotonic()
    result = app.handler(event, context)
    took = time.monotonic() - started

    assert faulty_dynamo.hits >= 1  # the fault was really met
    sent = [(t, m) for t, m in published() if m.get("requestId") == event["requestId"]]
    errors = [m for t, m in sent if t.endswith("/event") and m["type"] == "error"]
    spoken = " ".join(m["text"] for t, m in sent if t.endswith("/answer") and m["text"])
    assert errors and any("store failed" in e["detail"] for e in errors), errors
    assert spoken in (ANSWER, APOLOGY)  # the answer (decided: a store failure never costs the answer)
    assert spoken == ANSWER and result["answered"]
    assert took < 10.0, f"the device waited {took:.1f} s"  # and well inside the 35 s Lambda timeout
    assert len(app.deps.model.prompts) == 1  # answered once
