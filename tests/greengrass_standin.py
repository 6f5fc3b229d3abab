"""A stand-in for the AWS IoT Greengrass V2 control plane (moto has none), for the operations GDK calls.

It speaks the service's REST-JSON protocol on loopback, and checks every request against botocore's own model of
the API (``ParamValidator``), so a malformed call fails here as it would at AWS. Registered versions are kept, and a
second CreateComponentVersion of the same name and version is refused with ``ConflictException`` as AWS does.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import botocore.session
import yaml
from botocore.validate import ParamValidator

MODEL = botocore.session.get_session().get_service_model("greengrassv2")


class GreengrassV2StandIn:
    def __init__(self, account: str = "123456789012") -> None:
        self.account = account
        self.recipes: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> GreengrassV2StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)

    # -- protocol ----------------------------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length) or b"{}") if length else {}
        parts = url.path.strip("/").split("/")
        if method == "GET" and parts[:3] == ["greengrass", "v2", "components"] and parts[-1] == "versions":
            op, params = "ListComponentVersions", {"arn": unquote("/".join(parts[3:-1]))}
            params |= {k: (int(v[0]) if k == "maxResults" else v[0]) for k, v in parse_qs(url.query).items()}
        elif method == "POST" and url.path == "/greengrass/v2/createComponentVersion":
            # inlineRecipe is a blob: base64 on the wire, bytes in the model.
            op, params = "CreateComponentVersion", {**body, "inlineRecipe": base64.b64decode(body["inlineRecipe"])}
        else:
            return self._reply(req, 404, {"message": f"the stand-in does not serve {method} {url.path}"},
                               "ResourceNotFoundException")
        report = ParamValidator().validate(params, MODEL.operation_model(op).input_shape)
        with self._lock:
            self.calls.append((op, params))
            if report.has_errors():
                self.errors.append(report.generate_report())
                return self._reply(req, 400, {"message": report.generate_report()}, "ValidationException")
            status, payload, error = getattr(self, f"_{op}")(params)
        self._reply(req, status, payload, error)

    def _reply(self, req: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], error: str | None = None) -> None:
        data = json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        if error:
            req.send_header("x-amzn-ErrorType", error)
        req.end_headers()
        req.wfile.write(data)

    # -- operations --------------------------------------------------------------------------------------------------

    def _ListComponentVersions(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], None]:
        name = params["arn"].rsplit(":", 1)[-1]
        versions = sorted((v for (n, v) in self.recipes if n == name),
                          key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)
        return 200, {"componentVersions": [
            {"componentName": name, "componentVersion": v, "arn": f"{params['arn']}:versions:{v}"} for v in versions
        ]}, None

    def _CreateComponentVersion(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
        recipe = yaml.safe_load(params["inlineRecipe"].decode("utf-8"))  # YAML is a superset of the JSON form
        name, version = recipe["ComponentName"], recipe["ComponentVersion"]
        if (name, version) in self.recipes:
            return 409, {"message": f"Component {name} version {version} already exists"}, "ConflictException"
        self.recipes[(name, version)] = recipe
        arn = f"arn:aws:greengrass:ap-northeast-2:{self.account}:components:{name}:versions:{version}"
        return 201, {"arn": arn, "componentName": name, "componentVersion": version,
                     "creationTimestamp": 1_700_000_000, "status": {"componentState": "REQUESTED"}}, None
