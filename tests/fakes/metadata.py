"""A loopback HTTP server that plays a cloud metadata service or a hub endpoint.

`FakeServer` maps (method, path) to a `Reply`; a reply can demand request headers (and answers
what the real service answers when they are missing), wait before answering, or accept the
request and never answer.  Every request is recorded, so a test can prove what was (or was not)
sent.  `play_cloud()` installs the routes of one cloud's metadata service; `play_hub()` makes
the server a hub endpoint for the reachability race.

    with FakeServer() as server:
        play_cloud(server, "aws", "cn-north-1")
        EndpointsConfig(aws_metadata_url=server.url, ...)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

from typing_extensions import Self

Mode = Literal["answer", "404", "hang", "slow"]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False
    # Header name -> required value ("" = any value); without them the `refusal` is sent.
    requires: dict[str, str] = field(default_factory=dict)
    refusal: Reply | None = None


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # including the query string
    headers: dict[str, str]


NOT_FOUND = Reply(404, "Not Found", {"Content-Type": "text/plain"})


class FakeServer:
    """A threaded HTTP server on 127.0.0.1, port 0; a context manager that shuts itself down."""

    def __init__(self, fallback: Reply = NOT_FOUND) -> None:
        self.routes: dict[tuple[str, str], Reply] = {}
        self.fallback = fallback
        self.requests: list[Request] = []
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval keeps shutdown (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def route(self, method: str, path: str, reply: Reply) -> None:
        self.routes[(method, path)] = reply

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # releases hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.requests.append(Request(handler.command, handler.path, headers))
        reply = self.routes.get((handler.command, urlsplit(handler.path).path), self.fallback)
        for name, value in reply.requires.items():
            if name.lower() not in headers or (value and headers[name.lower()] != value):
                reply = reply.refusal or NOT_FOUND
                break
        if reply.hang:
            self._closing.wait()
            return
        if reply.delay_s:
            self._closing.wait(reply.delay_s)
        body = reply.body.encode()
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                server._respond(self)

            do_GET = do_HEAD = do_PUT = do_POST = _any

            def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
                pass

        return Handler


TEXT = {"Content-Type": "text/plain"}


def _cloud_routes(provider: str, region: str) -> dict[tuple[str, str], Reply]:
    """The routes a real service needs to tell its region, refusing as it does without headers."""
    if provider == "tencent":
        return {("GET", "/latest/meta-data/placement/region"): Reply(body=region, headers=TEXT)}
    if provider == "alibaba":
        token_ttl = "X-aliyun-ecs-metadata-token-ttl-seconds"
        return {
            ("PUT", "/latest/api/token"): Reply(
                body="ali-token", headers=TEXT, requires={token_ttl: ""}
            ),
            ("GET", "/latest/meta-data/region-id"): Reply(body=region, headers=TEXT),
        }
    if provider == "huawei":
        document = {"uuid": "0d6c4e1e", "availability_zone": f"{region}a", "region_id": region}
        return {
            ("GET", "/openstack/latest/meta_data.json"): Reply(
                body=json.dumps(document), headers={"Content-Type": "application/json"}
            )
        }
    if provider == "aws":
        unauthorized = Reply(401, "", TEXT)
        return {
            ("PUT", "/latest/api/token"): Reply(
                body="aws-token",
                headers=TEXT,
                requires={"X-aws-ec2-metadata-token-ttl-seconds": ""},
                refusal=Reply(400, "", TEXT),
            ),
            ("GET", "/latest/meta-data/placement/region"): Reply(
                body=region,
                headers=TEXT,
                requires={"X-aws-ec2-metadata-token": "aws-token"},
                refusal=unauthorized,
            ),
        }
    if provider == "gcp":
        return {
            ("GET", "/computeMetadata/v1/instance/zone"): Reply(
                body=f"projects/123456789/zones/{region}",
                headers={"Content-Type": "application/text", "Metadata-Flavor": "Google"},
                requires={"Metadata-Flavor": "Google"},
                refusal=Reply(403, "Missing Metadata-Flavor:Google header.", TEXT),
            )
        }
    if provider == "azure":
        return {
            ("GET", "/metadata/instance/compute/location"): Reply(
                body=region,
                headers=TEXT,
                requires={"Metadata": "true"},
                refusal=Reply(
                    400,
                    '{"error": "Bad request. Required metadata header not specified"}',
                    {"Content-Type": "application/json"},
                ),
            )
        }
    raise ValueError(f"unknown provider {provider!r}")


def play_cloud(
    server: FakeServer, provider: str, region: str, mode: Mode = "answer", delay_s: float = 0.5
) -> None:
    """Make `server` one cloud's metadata service; `region` is a zone for gcp (us-central1-a).

    "404": the service is there but the region path is missing; "hang"/"slow": the final
    value request is accepted and never answered / answered after `delay_s`.
    """
    routes = _cloud_routes(provider, region)
    value_route = list(routes)[-1]
    if mode == "404":
        routes[value_route] = NOT_FOUND
    elif mode == "hang":
        routes[value_route] = replace(routes[value_route], hang=True)
    elif mode == "slow":
        routes[value_route] = replace(routes[value_route], delay_s=delay_s)
    for (method, path), reply in routes.items():
        server.route(method, path, reply)


def play_hub(
    server: FakeServer, mode: Literal["answer", "hang", "slow"] = "answer", delay_s: float = 0.3
) -> None:
    """Make `server` a hub front page: every path answers 200, hangs, or answers late."""
    server.fallback = Reply(
        200,
        "<html>hub</html>",
        {"Content-Type": "text/html"},
        delay_s=delay_s if mode == "slow" else 0.0,
        hang=mode == "hang",
    )
