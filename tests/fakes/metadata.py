"""A loopback HTTP server that plays a cloud metadata service or a hub endpoint.

`FakeServer` maps (method, path) to a `Reply`; a reply can demand request headers (and answers
what the real service answers when they are missing), wait before answering, or accept the
request and never answer.  Every request is recorded, so a test can prove what was (or was not)
sent.  The HTTP side is the package's loopback server (bootstrap.demo.server); this module only
decides the replies.  `play_cloud()` installs the routes of one cloud's metadata service;
`play_hub()` makes the server a hub endpoint for the reachability race.

    with FakeServer() as server:
        play_cloud(server, "aws", "cn-north-1")
        EndpointsConfig(aws_metadata_url=server.url, ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from typing_extensions import Self

from bootstrap.demo.server import Exchange, Response, RouteServer

Mode = Literal["answer", "404", "hang", "slow", "hop-limit", "hop-limit-v2-only"]


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


class _Stage(RouteServer):
    """The package's loopback server with its answers handed to a FakeServer."""

    def __init__(self, player: FakeServer) -> None:
        super().__init__()
        self.player = player

    def serve(self, exchange: Exchange) -> None:
        self.player._respond(exchange)


class FakeServer:
    """A threaded HTTP server on 127.0.0.1, port 0; a context manager that shuts itself down."""

    def __init__(self, fallback: Reply = NOT_FOUND) -> None:
        self.routes: dict[tuple[str, str], Reply] = {}
        self.fallback = fallback
        self.requests: list[Request] = []
        self._stage = _Stage(self)

    @property
    def url(self) -> str:
        return self._stage.url

    def route(self, method: str, path: str, reply: Reply) -> None:
        self.routes[(method, path)] = reply

    def __enter__(self) -> Self:
        self._stage.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stage.stop()  # also releases hanging handlers

    def _respond(self, exchange: Exchange) -> None:
        incoming = exchange.request
        headers = incoming.headers
        self.requests.append(Request(incoming.method, incoming.target, headers))
        reply = self.routes.get((incoming.method, urlsplit(incoming.target).path), self.fallback)
        for name, value in reply.requires.items():
            if name.lower() not in headers or (value and headers[name.lower()] != value):
                reply = reply.refusal or NOT_FOUND
                break
        if reply.hang:
            self._stage.stopping.wait()
            return
        if reply.delay_s:
            self._stage.stopping.wait(reply.delay_s)
        # The reply's own headers, verbatim: no Content-Type unless the reply names one.
        exchange.send(
            Response(reply.status, dict(reply.headers), reply.body.encode(), None, ranges=False)
        )


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
    value request is accepted and never answered / answered after `delay_s`.  AWS only:
    "hop-limit" is IMDS seen from a container one hop past the instance's hop limit of 1 (the
    token PUT is accepted, its answer never arrives) with IMDSv1 allowed, so a GET without a
    token answers; "hop-limit-v2-only" the same with tokens required (HttpTokens=required,
    the default of new instances), where that GET gets 401.
    """
    routes = _cloud_routes(provider, region)
    value_route = list(routes)[-1]
    if mode.startswith("hop-limit"):
        if provider != "aws":
            raise ValueError("the hop limit is IMDSv2's (aws)")
        routes[("PUT", "/latest/api/token")] = replace(
            routes[("PUT", "/latest/api/token")], hang=True
        )
        if mode == "hop-limit":
            routes[value_route] = replace(routes[value_route], requires={})
    elif mode == "404":
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
