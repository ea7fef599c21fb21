"""Region detection against loopback servers that play cloud metadata services and hubs."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest

from bootstrap.config import EndpointsConfig
from bootstrap.detect.region import (
    HubProbe,
    RegionReport,
    classify_cloud_region,
    detect_region,
    race_verdict,
    system_timezone,
)
from tests.conftest import closed_loopback_url
from tests.fakes.metadata import NOT_FOUND, FakeServer, Reply, play_cloud, play_hub

Servers = Callable[..., FakeServer]
NEUTRAL = {"TZ": "UTC", "LANG": "C.UTF-8"}
METADATA_FIELDS = {
    "tencent": "tencent_metadata_url",
    "alibaba": "alibaba_metadata_url",
    "huawei": "huawei_metadata_url",
    "aws": "aws_metadata_url",
    "gcp": "gcp_metadata_url",
    "azure": "azure_metadata_url",
}
HUB_FIELDS = ("hf_endpoint", "hf_mirror_endpoint", "modelscope_endpoint")


def endpoints(**urls: str) -> EndpointsConfig:
    """Every endpoint refused at once, except those given."""
    dead = closed_loopback_url()
    return EndpointsConfig(**{name: dead for name in EndpointsConfig.model_fields} | urls)


@pytest.fixture
def fake_servers() -> Iterator[Servers]:
    """A factory of started loopback servers, all shut down when the test ends."""
    with ExitStack() as stack:
        yield lambda fallback=NOT_FOUND: stack.enter_context(FakeServer(fallback))


def evidence(report: RegionReport, source: str):
    return next(e for e in report.evidence if e.source == source)


# --- the mapping table --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "name", "expected"),
    [
        ("tencent", "ap-guangzhou", "cn"),
        ("tencent", "ap-shanghai", "cn"),
        ("tencent", "ap-beijing", "cn"),
        ("tencent", "ap-chengdu", "cn"),
        ("tencent", "ap-nanjing", "cn"),
        ("tencent", "ap-chongqing", "cn"),
        ("tencent", "ap-shanghai-fsi", "cn"),
        ("tencent", "ap-hongkong", "global"),
        ("tencent", "ap-taipei", "global"),
        ("tencent", "ap-singapore", "global"),
        ("tencent", "na-siliconvalley", "global"),
        ("tencent", "eu-frankfurt", "global"),
        ("alibaba", "cn-hangzhou", "cn"),
        ("alibaba", "cn-wulanchabu", "cn"),
        ("alibaba", "cn-shanghai-finance-1", "cn"),
        ("alibaba", "cn-hongkong", "global"),
        ("alibaba", "ap-southeast-1", "global"),
        ("alibaba", "us-west-1", "global"),
        ("huawei", "cn-north-4", "cn"),
        ("huawei", "cn-east-3", "cn"),
        ("huawei", "cn-south-1", "cn"),
        ("huawei", "ap-southeast-1", "global"),
        ("huawei", "ap-southeast-3", "global"),
        ("aws", "cn-north-1", "cn"),
        ("aws", "cn-northwest-1", "cn"),
        ("aws", "us-east-1", "global"),
        ("aws", "ap-east-1", "global"),
        ("azure", "chinaeast", "cn"),
        ("azure", "chinaeast2", "cn"),
        ("azure", "chinanorth3", "cn"),
        ("azure", "eastasia", "global"),
        ("azure", "westeurope", "global"),
        ("gcp", "asia-east2", "global"),
        ("gcp", "us-central1", "global"),
        ("tencent", " AP-Guangzhou\n", "cn"),
    ],
)
def test_cloud_region_names_map_to_cn_or_global(provider: str, name: str, expected: str) -> None:
    assert classify_cloud_region(provider, name) == expected


def test_unknown_provider_is_rejected() -> None:
    with pytest.raises(ValueError, match="oracle"):
        classify_cloud_region("oracle", "us-ashburn-1")


# --- each metadata service ----------------------------------------------------------------------

PROVIDER_REGIONS = [
    ("tencent", "ap-guangzhou", "cn"),
    ("tencent", "ap-hongkong", "global"),
    ("alibaba", "cn-hangzhou", "cn"),
    ("alibaba", "cn-hongkong", "global"),
    ("huawei", "cn-north-4", "cn"),
    ("huawei", "ap-southeast-1", "global"),
    ("aws", "cn-northwest-1", "cn"),
    ("aws", "us-east-1", "global"),
    ("gcp", "us-central1-a", "global"),
    ("gcp", "asia-east2-b", "global"),
    ("azure", "chinanorth3", "cn"),
    ("azure", "eastus", "global"),
]


@pytest.mark.parametrize(("provider", "name", "expected"), PROVIDER_REGIONS)
def test_each_metadata_service_decides(
    fake_servers: Servers, provider: str, name: str, expected: str
) -> None:
    server = fake_servers()
    play_cloud(server, provider, name)
    # A timezone that says the opposite proves metadata outranks it.
    tz = "Europe/Berlin" if expected == "cn" else "Asia/Shanghai"
    report = detect_region(
        "auto", endpoints(**{METADATA_FIELDS[provider]: server.url}), environ={"TZ": tz}
    )
    assert report.region == expected
    assert report.decided_by == f"metadata:{provider}"
    assert name.rsplit("-", 1)[0] in evidence(report, f"metadata:{provider}").detail


def test_fake_services_refuse_requests_without_their_headers(fake_servers: Servers) -> None:
    """The fakes enforce what the real services demand, so a passing test proves we send it."""
    aws, gcp, azure, alibaba = (fake_servers() for _ in range(4))
    play_cloud(aws, "aws", "us-east-1")
    play_cloud(gcp, "gcp", "us-central1-a")
    play_cloud(azure, "azure", "eastus")
    play_cloud(alibaba, "alibaba", "cn-hangzhou")
    with httpx.Client(trust_env=False) as client:
        assert client.get(f"{aws.url}/latest/meta-data/placement/region").status_code == 401
        assert client.put(f"{aws.url}/latest/api/token").status_code == 400
        assert client.get(f"{gcp.url}/computeMetadata/v1/instance/zone").status_code == 403
        assert client.get(f"{azure.url}/metadata/instance/compute/location").status_code == 400
        assert client.put(f"{alibaba.url}/latest/api/token").status_code == 404


def test_requests_carry_the_headers_and_query_each_service_documents(
    fake_servers: Servers,
) -> None:
    servers = {provider: fake_servers() for provider in ("aws", "alibaba", "azure")}
    play_cloud(servers["aws"], "aws", "us-east-1")
    play_cloud(servers["alibaba"], "alibaba", "cn-hangzhou")
    play_cloud(servers["azure"], "azure", "eastus")
    urls = {METADATA_FIELDS[p]: s.url for p, s in servers.items()}
    report = detect_region("auto", endpoints(**urls), environ=NEUTRAL)
    # Detection returns as soon as Alibaba decides; the AWS and Azure probes finish on their
    # own threads, so wait for what they send rather than racing them.
    deadline = time.monotonic() + 2.0
    expected = {"aws": 2, "alibaba": 2, "azure": 1}
    while any(len(servers[p].requests) < n for p, n in expected.items()):
        assert time.monotonic() < deadline, {p: len(s.requests) for p, s in servers.items()}
        time.sleep(0.01)

    aws_put, aws_get = servers["aws"].requests
    assert (aws_put.method, aws_put.path) == ("PUT", "/latest/api/token")
    assert aws_get.headers["x-aws-ec2-metadata-token"] == "aws-token"
    ali_put, ali_get = servers["alibaba"].requests
    assert "x-aliyun-ecs-metadata-token-ttl-seconds" in ali_put.headers
    assert ali_get.headers["x-aliyun-ecs-metadata-token"] == "ali-token"
    (azure_get,) = servers["azure"].requests
    assert "api-version=2021-02-01" in azure_get.path and "format=text" in azure_get.path
    # Alibaba comes before AWS and Azure in evidence order.
    assert (report.region, report.decided_by) == ("cn", "metadata:alibaba")


def test_aws_from_a_container_past_the_hop_limit_falls_back_to_imdsv1(
    fake_servers: Servers,
) -> None:
    server = fake_servers()
    play_cloud(server, "aws", "cn-northwest-1", mode="hop-limit")
    report = detect_region("auto", endpoints(aws_metadata_url=server.url), environ=NEUTRAL)
    assert (report.region, report.decided_by) == ("cn", "metadata:aws")
    detail = evidence(report, "metadata:aws").detail
    assert "IMDSv1" in detail and "--http-put-response-hop-limit 2" in detail
    put, get = server.requests
    assert (put.method, get.method) == ("PUT", "GET")
    assert "x-aws-ec2-metadata-token" not in get.headers


def test_aws_past_the_hop_limit_with_tokens_required_says_how_to_fix_it(
    fake_servers: Servers,
) -> None:
    server = fake_servers()
    play_cloud(server, "aws", "us-east-1", mode="hop-limit-v2-only")
    started = time.monotonic()
    report = detect_region("auto", endpoints(aws_metadata_url=server.url), environ=NEUTRAL)
    assert time.monotonic() - started < 2.0  # still within detect_timeout_s (1.5 s)
    outcome = evidence(report, "metadata:aws")
    assert outcome.points_to is None
    assert (
        "hop limit of 1" in outcome.detail and "--http-put-response-hop-limit 2" in outcome.detail
    )
    assert report.decided_by == "default"


def test_alibaba_normal_mode_without_token_endpoint_still_answers(fake_servers: Servers) -> None:
    server = fake_servers()
    server.route("GET", "/latest/meta-data/region-id", Reply(body="cn-shanghai"))
    report = detect_region("auto", endpoints(alibaba_metadata_url=server.url), environ=NEUTRAL)
    assert (report.region, report.decided_by) == ("cn", "metadata:alibaba")


def test_huawei_without_region_id_uses_the_availability_zone(fake_servers: Servers) -> None:
    server = fake_servers()
    server.route(
        "GET",
        "/openstack/latest/meta_data.json",
        Reply(body='{"uuid": "x", "availability_zone": "cn-east-3b"}'),
    )
    report = detect_region("auto", endpoints(huawei_metadata_url=server.url), environ=NEUTRAL)
    assert (report.region, report.decided_by) == ("cn", "metadata:huawei")
    assert "cn-east-3" in evidence(report, "metadata:huawei").detail


@pytest.mark.parametrize("provider", ["huawei", "aws", "azure"])
def test_services_sharing_link_local_address_are_told_apart(
    fake_servers: Servers, provider: str
) -> None:
    server = fake_servers()
    play_cloud(
        server,
        provider,
        {"huawei": "cn-north-4", "aws": "cn-north-1", "azure": "chinaeast2"}[provider],
    )
    shared = {METADATA_FIELDS[p]: server.url for p in ("huawei", "aws", "azure")}
    report = detect_region("auto", endpoints(**shared), environ=NEUTRAL)
    assert (report.region, report.decided_by) == ("cn", f"metadata:{provider}")
    for other in {"huawei", "aws", "azure"} - {provider}:
        outcome = evidence(report, f"metadata:{other}")
        # A later service may be left unawaited once an earlier one has answered.
        assert outcome.points_to is None
        assert "HTTP 404" in outcome.detail or outcome.detail.startswith("not awaited")


# --- inconclusive answers fall through -----------------------------------------------------------


def test_404_is_inconclusive_and_the_next_service_decides(fake_servers: Servers) -> None:
    tencent, alibaba = fake_servers(), fake_servers()
    play_cloud(tencent, "tencent", "ap-singapore", mode="404")
    play_cloud(alibaba, "alibaba", "cn-beijing")
    urls = endpoints(tencent_metadata_url=tencent.url, alibaba_metadata_url=alibaba.url)
    report = detect_region("auto", urls, environ=NEUTRAL)
    tencent_outcome = evidence(report, "metadata:tencent")
    assert tencent_outcome.points_to is None and "404" in tencent_outcome.detail
    assert (report.region, report.decided_by) == ("cn", "metadata:alibaba")


@pytest.mark.parametrize("provider", list(METADATA_FIELDS))
def test_every_404_falls_through_to_the_timezone(fake_servers: Servers, provider: str) -> None:
    server = fake_servers()
    play_cloud(server, provider, "cn-north-1", mode="404")
    report = detect_region(
        "auto",
        endpoints(**{METADATA_FIELDS[provider]: server.url}),
        environ={"TZ": "Asia/Shanghai"},
    )
    assert evidence(report, f"metadata:{provider}").points_to is None
    assert (report.region, report.decided_by) == ("cn", "timezone")


def test_captive_portal_html_is_not_believed(fake_servers: Servers) -> None:
    portal = fake_servers(Reply(200, "<html>please log in</html>", {"Content-Type": "text/html"}))
    urls = endpoints(**{field: portal.url for field in METADATA_FIELDS.values()})
    report = detect_region("auto", urls, environ=NEUTRAL)
    assert len(portal.requests) >= len(METADATA_FIELDS)
    assert all(evidence(report, f"metadata:{p}").points_to is None for p in METADATA_FIELDS)
    assert (report.region, report.decided_by) == ("global", "default")


def test_plain_text_garbage_is_not_believed(fake_servers: Servers) -> None:
    server = fake_servers()
    server.route("GET", "/latest/meta-data/placement/region", Reply(body="Service Unavailable"))
    report = detect_region("auto", endpoints(tencent_metadata_url=server.url), environ=NEUTRAL)
    assert "unexpected region" in evidence(report, "metadata:tencent").detail
    assert report.decided_by == "default"


# --- time bound -------------------------------------------------------------------------------


def test_everything_hanging_returns_within_two_seconds(fake_servers: Servers) -> None:
    tarpit = fake_servers(Reply(hang=True))
    urls = EndpointsConfig(**{name: tarpit.url for name in EndpointsConfig.model_fields})
    started = time.monotonic()
    report = detect_region("auto", urls, timeout_s=1.5, environ={"TZ": "Asia/Shanghai"})
    wall = time.monotonic() - started
    assert wall < 2.0
    # every probe was sent, and AWS's IMDSv1 GET after its token request went unanswered
    assert len(tarpit.requests) == len(EndpointsConfig.model_fields) + 1
    assert (report.region, report.decided_by) == ("cn", "timezone")
    assert [p.ok for p in report.probes] == [False, False, False]
    assert all(p.error == "no answer within 1.5 s" for p in report.probes)
    assert all(
        evidence(report, f"metadata:{p}").detail == "no answer within 1.5 s"
        for p in METADATA_FIELDS
        if p != "aws"  # a token request accepted and never answered: the hop limit's mark
    )
    assert "hop limit" in evidence(report, "metadata:aws").detail


def test_slow_metadata_within_budget_still_counts(fake_servers: Servers) -> None:
    server = fake_servers()
    play_cloud(server, "tencent", "ap-shanghai", mode="slow", delay_s=0.6)
    report = detect_region(
        "auto", endpoints(tencent_metadata_url=server.url), timeout_s=1.5, environ=NEUTRAL
    )
    assert (report.region, report.decided_by) == ("cn", "metadata:tencent")
    assert report.elapsed_ms >= 600


def test_metadata_slower_than_budget_is_abandoned(fake_servers: Servers) -> None:
    server = fake_servers()
    play_cloud(server, "aws", "cn-north-1", mode="slow", delay_s=5.0)
    started = time.monotonic()
    report = detect_region(
        "auto", endpoints(aws_metadata_url=server.url), timeout_s=0.5, environ=NEUTRAL
    )
    assert time.monotonic() - started < 1.0
    assert evidence(report, "metadata:aws").detail == "no answer within 0.5 s"
    assert report.decided_by == "default"


def test_returns_early_once_no_pending_service_can_change_the_answer(fake_servers: Servers) -> None:
    tencent, tarpit = fake_servers(), fake_servers(Reply(hang=True))
    play_cloud(tencent, "tencent", "ap-guangzhou")
    urls = endpoints(tencent_metadata_url=tencent.url, aws_metadata_url=tarpit.url)
    report = detect_region("auto", urls, timeout_s=1.5, environ=NEUTRAL)
    assert report.decided_by == "metadata:tencent"
    assert report.elapsed_ms < 1000
    assert evidence(report, "metadata:aws").detail.startswith("not awaited")


def test_an_earlier_service_is_waited_for_before_a_later_one_decides(
    fake_servers: Servers,
) -> None:
    tencent, aws = fake_servers(), fake_servers()
    play_cloud(tencent, "tencent", "ap-guangzhou", mode="slow", delay_s=0.4)
    play_cloud(aws, "aws", "us-west-2")
    urls = endpoints(tencent_metadata_url=tencent.url, aws_metadata_url=aws.url)
    report = detect_region("auto", urls, timeout_s=1.5, environ=NEUTRAL)
    assert (report.region, report.decided_by) == ("cn", "metadata:tencent")
    assert evidence(report, "metadata:aws").points_to == "global"


# --- flag and offline -------------------------------------------------------------------------


def test_flag_overrides_metadata_but_hubs_are_still_probed(fake_servers: Servers) -> None:
    cloud, hub = fake_servers(), fake_servers()
    play_cloud(cloud, "tencent", "ap-guangzhou")
    play_hub(hub)
    urls = endpoints(tencent_metadata_url=cloud.url, **{field: hub.url for field in HUB_FIELDS})
    report = detect_region("global", urls, environ={"TZ": "Asia/Shanghai", "LANG": "zh_CN.UTF-8"})
    assert (report.region, report.requested, report.decided_by) == ("global", "global", "flag")
    assert cloud.requests == []
    assert evidence(report, "metadata:tencent").detail == "not probed: region given explicitly"
    assert [p.name for p in report.probes] == ["huggingface", "hf-mirror", "modelscope"]
    assert all(p.ok and p.latency_ms is not None for p in report.probes)
    assert sorted(r.method for r in hub.requests) == ["HEAD", "HEAD", "HEAD"]


def test_flag_cn_wins_over_global_evidence(fake_servers: Servers) -> None:
    report = detect_region("cn", endpoints(), environ={"TZ": "America/New_York"})
    assert (report.region, report.decided_by) == ("cn", "flag")


def test_offline_sends_nothing(fake_servers: Servers) -> None:
    server = fake_servers()
    play_cloud(server, "alibaba", "cn-hangzhou")
    play_hub(server)
    urls = EndpointsConfig(**{name: server.url for name in EndpointsConfig.model_fields})
    report = detect_region("auto", urls, offline=True, environ={"TZ": "Asia/Shanghai"})
    assert server.requests == []
    assert report.probes == []
    assert (report.region, report.decided_by) == ("cn", "timezone")
    assert evidence(report, "reachability").detail == "not probed: offline"


# --- reachability race --------------------------------------------------------------------------


def hubs(fake_servers: Servers, **modes: str) -> dict[str, str]:
    """Hub endpoint fields -> URLs; a mode of "dead" leaves that endpoint refused."""
    urls = {}
    for field, mode in modes.items():
        if mode != "dead":
            server = fake_servers()
            play_hub(server, mode)  # type: ignore[arg-type]
            urls[field] = server.url
    return urls


@pytest.mark.parametrize(
    ("hf", "mirror", "modelscope", "expected"),
    [
        ("dead", "answer", "answer", "cn"),
        ("dead", "dead", "answer", "cn"),
        ("dead", "answer", "dead", "cn"),
        ("answer", "answer", "answer", "global"),
        ("answer", "dead", "dead", "global"),
        ("slow", "answer", "answer", "cn"),
        ("hang", "answer", "answer", "cn"),
        ("dead", "dead", "dead", None),
    ],
)
def test_reachability_race(
    fake_servers: Servers, hf: str, mirror: str, modelscope: str, expected: str | None
) -> None:
    urls = hubs(
        fake_servers, hf_endpoint=hf, hf_mirror_endpoint=mirror, modelscope_endpoint=modelscope
    )
    report = detect_region("auto", endpoints(**urls), timeout_s=1.0, environ=NEUTRAL)
    race = evidence(report, "reachability")
    assert race.points_to == expected
    assert report.decided_by == ("reachability" if expected else "default")
    assert [p.ok for p in report.probes] == [
        m == "answer" or m == "slow" for m in (hf, mirror, modelscope)
    ]
    if hf == "slow":
        assert report.probes[0].latency_ms >= 300
        assert re.search(r"huggingface \d+ ms", race.detail)


def test_hub_answering_5xx_counts_as_unreachable(fake_servers: Servers) -> None:
    broken = fake_servers(Reply(503, "busy"))
    mirror = fake_servers()
    play_hub(mirror)
    report = detect_region(
        "auto",
        endpoints(hf_endpoint=broken.url, modelscope_endpoint=mirror.url),
        environ=NEUTRAL,
    )
    assert report.probes[0].ok is False and report.probes[0].error == "HTTP 503"
    assert (report.region, report.decided_by) == ("cn", "reachability")


def test_refused_connection_is_named_in_the_probe_error() -> None:
    report = detect_region("auto", endpoints(), environ=NEUTRAL)
    assert [p.error for p in report.probes] == ["ConnectError"] * 3
    assert evidence(report, "reachability").detail.startswith("huggingface failed: ConnectError")


def probe(name: str, latency_ms: float | None) -> HubProbe:
    ok = latency_ms is not None
    return HubProbe(
        name=name,
        endpoint="http://x",
        ok=ok,
        latency_ms=latency_ms,
        error=None if ok else "ConnectError",
    )


@pytest.mark.parametrize(
    ("hf_ms", "modelscope_ms", "expected"),
    [(150, 50, "global"), (250, 50, "cn"), (40, 5, "global"), (900, 30, "cn")],
)
def test_race_latency_ratio(hf_ms: float, modelscope_ms: float, expected: str) -> None:
    verdict = race_verdict(
        [probe("huggingface", hf_ms), probe("hf-mirror", None), probe("modelscope", modelscope_ms)]
    )
    assert verdict.points_to == expected


# --- timezone and locale ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "region", "decided_by"),
    [
        ({"TZ": "Asia/Shanghai"}, "cn", "timezone"),
        ({"TZ": ":Asia/Chongqing"}, "cn", "timezone"),
        ({"TZ": "/usr/share/zoneinfo/Asia/Urumqi"}, "cn", "timezone"),
        ({"TZ": "PRC"}, "cn", "timezone"),
        ({"TZ": "Asia/Hong_Kong", "LANG": "zh_CN.UTF-8"}, "global", "timezone"),
        ({"TZ": "Asia/Taipei"}, "global", "timezone"),
        ({"TZ": "UTC", "LANG": "zh_CN.UTF-8"}, "cn", "locale"),
        ({"TZ": "Etc/UTC", "LC_ALL": "zh_CN.GB18030", "LANG": "en_US.UTF-8"}, "cn", "locale"),
        ({"TZ": "UTC", "LANG": "zh_HK.UTF-8"}, "global", "locale"),
        ({"TZ": "UTC", "LC_ALL": "zh_TW.UTF-8"}, "global", "locale"),
        ({"TZ": "UTC", "LANG": "en_US.UTF-8"}, "global", "default"),
        ({"TZ": "Etc/UTC", "LANG": "C.UTF-8"}, "global", "default"),
    ],
)
def test_timezone_and_locale_hints(environ: dict[str, str], region: str, decided_by: str) -> None:
    report = detect_region("auto", endpoints(), offline=True, environ=environ)
    assert (report.region, report.decided_by) == (region, decided_by)


def test_system_timezone_reads_localtime_link_then_timezone_file(tmp_path) -> None:
    zone_file = tmp_path / "usr/share/zoneinfo/Asia/Shanghai"
    zone_file.parent.mkdir(parents=True)
    zone_file.write_bytes(b"TZif")
    localtime, timezone = tmp_path / "localtime", tmp_path / "timezone"
    localtime.symlink_to(zone_file)
    assert system_timezone(localtime, timezone) == "Asia/Shanghai"

    localtime.unlink()
    localtime.write_bytes(b"TZif")  # a copied file, as some images have
    timezone.write_text("Asia/Harbin\n")
    assert system_timezone(localtime, timezone) == "Asia/Harbin"

    timezone.unlink()
    assert system_timezone(localtime, timezone) is None


# --- the report ---------------------------------------------------------------------------------


def test_report_lists_every_source_in_order_and_round_trips_through_json() -> None:
    report = detect_region("auto", endpoints(), environ=NEUTRAL)
    assert [e.source for e in report.evidence] == [
        "flag",
        "metadata:tencent",
        "metadata:alibaba",
        "metadata:huawei",
        "metadata:aws",
        "metadata:gcp",
        "metadata:azure",
        "reachability",
        "timezone",
        "locale",
        "default",
    ]
    assert RegionReport.model_validate_json(report.model_dump_json()) == report
