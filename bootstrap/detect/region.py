"""Where is this machine: mainland China (`cn`) or anywhere else (`global`)?

Evidence, strongest first: the explicit request, the cloud's instance-metadata service, a
reachability race between huggingface.co and the mainland mirrors, the timezone, the locale,
and finally a default.  Every network probe runs in its own daemon thread against a shared
deadline, so the whole call returns within `timeout_s` (plus a few milliseconds) even when
every endpoint accepts the connection and never answers; probes still stuck at the deadline are
abandoned, not joined, and being daemon threads they do not hold up interpreter exit.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.config import HF_MIRROR, HUGGINGFACE, MODELSCOPE, EndpointsConfig

Region = Literal["cn", "global"]
RegionRequest = Literal["auto", "cn", "global"]


class Evidence(BaseModel, frozen=True):
    """What one source says about the region; `points_to=None` means it was inconclusive."""

    source: str
    points_to: Region | None
    detail: str


class HubProbe(BaseModel, frozen=True):
    """One hub's answer to a cheap HEAD request; mirror ordering puts failed hubs last."""

    name: str
    endpoint: str
    ok: bool
    latency_ms: float | None
    error: str | None


class RegionReport(BaseModel, frozen=True):
    """The conclusion, which source decided it, and every source's outcome in evidence order."""

    region: Region
    requested: RegionRequest
    decided_by: str
    evidence: list[Evidence]
    probes: list[HubProbe]
    elapsed_ms: float


class _Inconclusive(Exception):
    """A probe got an answer that does not tell the region (404, captive portal, garbage)."""


class _Answered(Exception):
    """A reader found the region the long way round; `detail` says which, for the evidence."""

    def __init__(self, region_name: str, detail: str) -> None:
        super().__init__(detail)
        self.region_name = region_name
        self.detail = detail


# --- cloud region names -----------------------------------------------------------------------

# Hong Kong, Macau and Taiwan are outside the mainland network, whatever the prefix says
# (Alibaba calls Hong Kong `cn-hongkong`).
_OUTSIDE_MAINLAND = {"hongkong", "hk", "macau", "macao", "taipei", "taiwan"}

# Tencent names regions `ap-<city>` for mainland and overseas alike, so the city decides;
# suffixes such as `-fsi` (finance) or `-ec` (edge zones) keep the city token intact.
_MAINLAND_CITIES = {
    "beijing",
    "changsha",
    "chengdu",
    "chongqing",
    "fuzhou",
    "guangzhou",
    "guiyang",
    "hangzhou",
    "harbin",
    "hefei",
    "huhehaote",
    "jinan",
    "kunming",
    "lanzhou",
    "nanjing",
    "nanning",
    "qingdao",
    "qingyuan",
    "shanghai",
    "shenyang",
    "shenzhen",
    "shijiazhuang",
    "taiyuan",
    "tianjin",
    "urumqi",
    "wuhan",
    "xiamen",
    "xian",
    "zhengzhou",
}

_MAINLAND_RULES: dict[str, Callable[[str], bool]] = {
    "tencent": lambda name: bool(_MAINLAND_CITIES & set(name.split("-")[1:])),
    "alibaba": lambda name: name.startswith("cn-"),
    "huawei": lambda name: name.startswith("cn-"),
    "aws": lambda name: name.startswith("cn-"),
    "azure": lambda name: name.startswith("china"),
    "gcp": lambda name: False,  # Google Cloud has no mainland region
}


def classify_cloud_region(provider: str, region_name: str) -> Region:
    """Map a cloud's region (or zone) name to `cn` or `global`.

    `provider` is one of tencent, alibaba, huawei, aws, gcp, azure; an unknown provider is a
    programming error and raises ValueError.
    """
    try:
        is_mainland = _MAINLAND_RULES[provider]
    except KeyError:
        raise ValueError(f"unknown cloud provider {provider!r}") from None
    name = region_name.strip().lower()
    if _OUTSIDE_MAINLAND & set(name.split("-")):
        return "global"
    return "cn" if is_mainland(name) else "global"


# --- metadata services ------------------------------------------------------------------------

_REGION_NAME = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+$")  # ap-guangzhou, cn-north-4, us-east-1
_AZURE_LOCATION = re.compile(r"^[a-z]+[0-9]*$")  # eastus, chinanorth3
_GCP_ZONE = re.compile(r"^projects/\d+/zones/([a-z]+-[a-z]+[0-9]+-[a-z])$")
_ZONE_SUFFIX = re.compile(r"^([a-z]{2}(-[a-z0-9]+)*-[0-9]+)[a-z]$")  # cn-north-4a -> cn-north-4
_TOKEN_TTL_S = "60"  # we read one value; a short-lived token is all we need


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Inconclusive("deadline reached")
    return left


def _call(
    client: httpx.Client,
    method: str,
    url: str,
    deadline: float,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """One request whose timeout is whatever is left of the shared deadline; 200 or inconclusive."""
    response = client.request(method, url, headers=headers, timeout=_remaining(deadline))
    if response.status_code != 200:
        raise _Inconclusive(f"HTTP {response.status_code} from {url}")
    if "html" in response.headers.get("content-type", ""):
        raise _Inconclusive(f"HTML page from {url} (captive portal or proxy?)")
    return response


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    value = value.strip()
    if not pattern.fullmatch(value):
        raise _Inconclusive(f"unexpected {what} {value[:60]!r}")
    return value


def _token_then_get(
    client: httpx.Client,
    base: str,
    deadline: float,
    *,
    path: str,
    ttl_header: str,
    token_header: str,
) -> httpx.Response:
    """The IMDSv2-style session: PUT for a token, then GET the value with it."""
    token = _session_token(client, base, deadline, ttl_header)
    return _call(client, "GET", f"{base}{path}", deadline, {token_header: token})


def _session_token(client: httpx.Client, base: str, deadline: float, ttl_header: str) -> str:
    token = _call(
        client, "PUT", f"{base}/latest/api/token", deadline, {ttl_header: _TOKEN_TTL_S}
    ).text.strip()
    if not token:
        raise _Inconclusive("empty metadata token")
    return token


def _read_tencent(client: httpx.Client, base: str, deadline: float) -> str:
    response = _call(client, "GET", f"{base}/latest/meta-data/placement/region", deadline)
    return _checked(response.text, _REGION_NAME, "region")


def _read_alibaba(client: httpx.Client, base: str, deadline: float) -> str:
    # Hardened mode needs a token and normal mode accepts one, so always ask for it first;
    # only an old service that refuses the token request gets the plain GET.
    path = "/latest/meta-data/region-id"
    try:
        response = _token_then_get(
            client,
            base,
            deadline,
            path=path,
            ttl_header="X-aliyun-ecs-metadata-token-ttl-seconds",
            token_header="X-aliyun-ecs-metadata-token",
        )
    except _Inconclusive:
        response = _call(client, "GET", f"{base}{path}", deadline)
    return _checked(response.text, _REGION_NAME, "region")


def _read_huawei(client: httpx.Client, base: str, deadline: float) -> str:
    response = _call(client, "GET", f"{base}/openstack/latest/meta_data.json", deadline)
    try:
        document = response.json()
    except ValueError:
        raise _Inconclusive("meta_data.json is not JSON") from None
    if not isinstance(document, dict):
        raise _Inconclusive("meta_data.json is not an object")
    if isinstance(document.get("region_id"), str):
        return _checked(document["region_id"], _REGION_NAME, "region_id")
    # Plain OpenStack has no region_id; Huawei zones are the region plus a letter.
    zone = _checked(str(document.get("availability_zone", "")), _ZONE_SUFFIX, "availability_zone")
    return _ZONE_SUFFIX.fullmatch(zone).group(1)  # type: ignore[union-attr]


# Inside a container on a bridge network the token's answer takes one hop more than the
# instance's default HttpPutResponseHopLimit of 1 lets it: the PUT is accepted, and its answer is
# dropped on the way.  The GET of IMDSv1 is not limited; it answers where IMDSv1 is allowed.
AWS_HOP_LIMIT_HINT = (
    "the IMDSv2 token request was accepted but got no answer, as when a container sits one hop "
    "past the instance's default hop limit of 1: allow 2 hops (aws ec2 "
    "modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2), run "
    "the container with --network host, or pass --region"
)


def _read_aws(client: httpx.Client, base: str, deadline: float) -> str:
    # IMDSv2 first: Huawei also serves EC2-style paths on 169.254.169.254, but not the token.
    # The token request gets half the time left, so that a dropped answer leaves time for
    # IMDSv1 (Huawei's service refuses the token request at once: that is no dropped answer).
    path = "/latest/meta-data/placement/region"
    ttl = "X-aws-ec2-metadata-token-ttl-seconds"
    try:
        token = _session_token(client, base, time.monotonic() + _remaining(deadline) / 2, ttl)
    except httpx.ReadTimeout:
        try:  # done a little before the deadline, so that its word is awaited
            early = time.monotonic() + _remaining(deadline) * 0.8
            response = _call(client, "GET", f"{base}{path}", early)
        except (httpx.HTTPError, _Inconclusive):
            raise _Inconclusive(AWS_HOP_LIMIT_HINT) from None
        name = _checked(response.text, _REGION_NAME, "region")
        raise _Answered(name, f"region {name} (IMDSv1; {AWS_HOP_LIMIT_HINT})") from None
    response = _call(client, "GET", f"{base}{path}", deadline, {"X-aws-ec2-metadata-token": token})
    return _checked(response.text, _REGION_NAME, "region")


def _read_gcp(client: httpx.Client, base: str, deadline: float) -> str:
    response = _call(
        client,
        "GET",
        f"{base}/computeMetadata/v1/instance/zone",
        deadline,
        {"Metadata-Flavor": "Google"},
    )
    if response.headers.get("Metadata-Flavor") != "Google":
        raise _Inconclusive("answer lacks the Metadata-Flavor: Google header")
    zone = _GCP_ZONE.fullmatch(_checked(response.text, _GCP_ZONE, "zone")).group(1)  # type: ignore[union-attr]
    return zone.rsplit("-", 1)[0]  # us-central1-a -> us-central1


def _read_azure(client: httpx.Client, base: str, deadline: float) -> str:
    url = f"{base}/metadata/instance/compute/location?api-version=2021-02-01&format=text"
    response = _call(client, "GET", url, deadline, {"Metadata": "true"})
    return _checked(response.text, _AZURE_LOCATION, "location")


@dataclass(frozen=True)
class _MetadataService:
    provider: str
    url_field: str
    read: Callable[[httpx.Client, str, float], str]

    @property
    def source(self) -> str:
        return f"metadata:{self.provider}"


_METADATA_SERVICES = (
    _MetadataService("tencent", "tencent_metadata_url", _read_tencent),
    _MetadataService("alibaba", "alibaba_metadata_url", _read_alibaba),
    _MetadataService("huawei", "huawei_metadata_url", _read_huawei),
    _MetadataService("aws", "aws_metadata_url", _read_aws),
    _MetadataService("gcp", "gcp_metadata_url", _read_gcp),
    _MetadataService("azure", "azure_metadata_url", _read_azure),
)


def _error_text(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, _Inconclusive):
        return str(exc)
    return type(exc).__name__


def _probe_metadata(
    service: _MetadataService, base: str, deadline: float, timeout_s: float
) -> Evidence:
    # Link-local metadata must never go through an HTTP proxy from the environment.
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        try:
            name = service.read(client, base.rstrip("/"), deadline)
            detail = f"region {name}"
        except _Answered as answer:
            name, detail = answer.region_name, answer.detail
        except (httpx.HTTPError, _Inconclusive) as exc:
            return Evidence(
                source=service.source, points_to=None, detail=_error_text(exc, timeout_s)
            )
    return Evidence(
        source=service.source,
        points_to=classify_cloud_region(service.provider, name),
        detail=detail,
    )


# --- reachability race ------------------------------------------------------------------------

_MAINLAND_MIRRORS = (HF_MIRROR, MODELSCOPE)
_SLOWER_FACTOR = 3.0
# Loopback and same-city answers take a few ms; a ratio of such tiny numbers is noise.
_JITTER_MS = 30.0


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle per probe would eat into the time budget.
    return httpx.create_ssl_context()


def _probe_hub(name: str, endpoint: str, deadline: float, timeout_s: float) -> HubProbe:
    # Hubs are reached through the user's proxy if they have one, as the downloads will be.
    started = time.monotonic()
    try:
        with httpx.Client(verify=_tls_context(), follow_redirects=False) as client:
            response = client.head(endpoint, timeout=_remaining(deadline))
    except (httpx.HTTPError, _Inconclusive) as exc:
        return HubProbe(
            name=name,
            endpoint=endpoint,
            ok=False,
            latency_ms=None,
            error=_error_text(exc, timeout_s),
        )
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    if response.status_code >= 500:
        return HubProbe(
            name=name,
            endpoint=endpoint,
            ok=False,
            latency_ms=latency_ms,
            error=f"HTTP {response.status_code}",
        )
    return HubProbe(name=name, endpoint=endpoint, ok=True, latency_ms=latency_ms, error=None)


def _describe(probe: HubProbe) -> str:
    return (
        f"{probe.name} {probe.latency_ms:.0f} ms"
        if probe.ok
        else f"{probe.name} failed: {probe.error}"
    )


def race_verdict(probes: list[HubProbe]) -> Evidence:
    """What the hub probes say: huggingface blocked or much slower than ModelScope means cn."""
    detail = ", ".join(_describe(p) for p in probes)
    by_name = {p.name: p for p in probes}
    hf = by_name.get(HUGGINGFACE)
    modelscope = by_name.get(MODELSCOPE)
    mirrors_ok = any(by_name[m].ok for m in _MAINLAND_MIRRORS if m in by_name)
    if hf is None or not hf.ok:
        return Evidence(
            source="reachability", points_to="cn" if mirrors_ok else None, detail=detail
        )
    if modelscope is None or not modelscope.ok:
        return Evidence(source="reachability", points_to="global", detail=detail)
    assert hf.latency_ms is not None and modelscope.latency_ms is not None
    much_slower = hf.latency_ms > _SLOWER_FACTOR * modelscope.latency_ms + _JITTER_MS
    return Evidence(
        source="reachability", points_to="cn" if much_slower else "global", detail=detail
    )


# --- timezone and locale ----------------------------------------------------------------------

_CN_ZONES = {
    "Asia/Shanghai",
    "Asia/Chongqing",
    "Asia/Chungking",
    "Asia/Harbin",
    "Asia/Urumqi",
    "Asia/Kashgar",
    "PRC",
}
_NEUTRAL_ZONE_AREAS = {"Etc", "UTC", "GMT", "Universal", "Zulu"}
_IANA_ZONE = re.compile(r"^[A-Z][A-Za-z_]+(/[A-Za-z0-9_+-]+)+$")
_ZONEINFO_MARK = "zoneinfo/"


def system_timezone(
    localtime: Path = Path("/etc/localtime"), timezone_file: Path = Path("/etc/timezone")
) -> str | None:
    """The system's zone name from /etc/localtime's symlink target, else /etc/timezone."""
    try:
        target = str(localtime.readlink())
        if _ZONEINFO_MARK in target:
            return target.split(_ZONEINFO_MARK, 1)[1]
    except OSError:
        pass
    try:
        return timezone_file.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _normalise_zone(raw: str) -> str:
    zone = raw.strip().lstrip(":")
    return zone.split(_ZONEINFO_MARK, 1)[1] if _ZONEINFO_MARK in zone else zone


def timezone_evidence(environ: Mapping[str, str] | None = None) -> Evidence:
    """TZ (or the system zone when TZ is unset): a China zone hints cn, other named zones global."""
    raw = C.timezone_name(environ)
    origin = "TZ"
    if raw is None:
        raw, origin = system_timezone(), "system zone"
    if raw is None:
        return Evidence(source="timezone", points_to=None, detail="no timezone set")
    zone = _normalise_zone(raw)
    if zone in _CN_ZONES:
        return Evidence(source="timezone", points_to="cn", detail=f"{origin} {zone}")
    if _IANA_ZONE.fullmatch(zone) and zone.split("/", 1)[0] not in _NEUTRAL_ZONE_AREAS:
        return Evidence(source="timezone", points_to="global", detail=f"{origin} {zone}")
    return Evidence(
        source="timezone", points_to=None, detail=f"{origin} {zone} says nothing about place"
    )


def locale_evidence(environ: Mapping[str, str] | None = None) -> Evidence:
    """A zh_CN locale hints cn and zh_HK/zh_TW/zh_MO global; anything else (en_US, C) is no hint."""
    raw = C.locale_name(environ)
    if raw is None:
        return Evidence(source="locale", points_to=None, detail="no locale set")
    territory = raw.split(".", 1)[0].split("@", 1)[0].replace("-", "_").split("_")[-1].upper()
    if territory == "CN":
        return Evidence(source="locale", points_to="cn", detail=f"locale {raw}")
    if territory in {"HK", "TW", "MO"}:
        return Evidence(source="locale", points_to="global", detail=f"locale {raw}")
    return Evidence(
        source="locale", points_to=None, detail=f"locale {raw} says nothing about place"
    )


# --- orchestration ----------------------------------------------------------------------------

_HUBS = (
    (HUGGINGFACE, "hf_endpoint"),
    (HF_MIRROR, "hf_mirror_endpoint"),
    (MODELSCOPE, "modelscope_endpoint"),
)


def _spawn(target: Callable[..., object], *args: object) -> Future:
    """Run `target` in a daemon thread: one stuck past the deadline must not block exit."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(target(*args))
        except BaseException as exc:  # re-raised in the caller by result()  # noqa: BLE001
            future.set_exception(exc)

    threading.Thread(
        target=run, name=f"region-probe-{getattr(target, '__name__', 'probe')}", daemon=True
    ).start()
    return future


def _metadata_settled(metadata: list[Future]) -> bool:
    """True once a conclusive answer exists that no earlier (still running) service can overrule."""
    for future in metadata:
        if not future.done():
            return False
        if future.result().points_to is not None:
            return True
    return True


def _wait(hubs: list[Future], metadata: list[Future], deadline: float) -> None:
    pending = {f for f in hubs + metadata if not f.done()}
    while pending and not (all(f.done() for f in hubs) and _metadata_settled(metadata)):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        _, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)


def _unfinished(timed_out: bool, timeout_s: float) -> str:
    if timed_out:
        return f"no answer within {timeout_s:g} s"
    return "not awaited: an earlier metadata service already answered"


def detect_region(
    requested: RegionRequest,
    endpoints: EndpointsConfig,
    *,
    offline: bool = False,
    timeout_s: float = 1.5,
    environ: Mapping[str, str] | None = None,
) -> RegionReport:
    """Decide `cn` or `global` with evidence; returns within about `timeout_s` whatever hangs.

    The hub probes run even when `requested` is explicit, because mirror ordering uses them;
    metadata is only asked when `requested` is "auto".  `offline` sends nothing at all.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    ask_metadata = not offline and requested == "auto"
    hub_jobs = [
        _spawn(_probe_hub, name, getattr(endpoints, field), deadline, timeout_s)
        for name, field in _HUBS
        if not offline
    ]
    metadata_jobs = [
        _spawn(_probe_metadata, svc, getattr(endpoints, svc.url_field), deadline, timeout_s)
        for svc in _METADATA_SERVICES
        if ask_metadata
    ]
    _wait(hub_jobs, metadata_jobs, deadline)
    unfinished = _unfinished(time.monotonic() >= deadline, timeout_s)

    probes = [
        job.result()
        if job.done()
        else HubProbe(
            name=name,
            endpoint=getattr(endpoints, field),
            ok=False,
            latency_ms=None,
            error=unfinished,
        )
        for job, (name, field) in zip(hub_jobs, _HUBS, strict=False)
    ]
    if ask_metadata:
        metadata = [
            job.result()
            if job.done()
            else Evidence(source=svc.source, points_to=None, detail=unfinished)
            for job, svc in zip(metadata_jobs, _METADATA_SERVICES, strict=False)
        ]
    else:
        why = "not probed: offline" if offline else "not probed: region given explicitly"
        metadata = [
            Evidence(source=svc.source, points_to=None, detail=why) for svc in _METADATA_SERVICES
        ]
    reachability = (
        race_verdict(probes)
        if probes
        else Evidence(source="reachability", points_to=None, detail="not probed: offline")
    )
    evidence = [
        Evidence(
            source="flag",
            points_to=None if requested == "auto" else requested,
            detail=f"--region {requested}",
        ),
        *metadata,
        reachability,
        timezone_evidence(environ),
        locale_evidence(environ),
        Evidence(source="default", points_to="global", detail="nothing else was conclusive"),
    ]
    decisive = next(e for e in evidence if e.points_to is not None)
    return RegionReport(
        region=decisive.points_to,  # type: ignore[arg-type]
        requested=requested,
        decided_by=decisive.source,
        evidence=evidence,
        probes=probes,
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
