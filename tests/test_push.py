"""`export --push`: the real huggingface_hub and modelscope_hub clients against the loopback fakes.

The exports directory is made by hand here (small files, described through the manifest
helpers), so the tests are about the upload, not about building models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import constants as hf_constants

from bootstrap.cli import main
from bootstrap.config import EndpointsConfig
from bootstrap.errors import EnvironmentUnfit, PushFailed
from bootstrap.export import export
from bootstrap.export.manifest import (
    ExportManifest,
    PushRecord,
    describe,
    read_manifest,
    write_manifest,
)
from bootstrap.export.push import push
from bootstrap.hub.retry import RetryPolicy
from bootstrap.workspace import Workspace
from tests.conftest import closed_loopback_url
from tests.export_helpers import SMOLLM2_ID, make_lora_workspace
from tests.fakes.hf_hub import FakeHFHub
from tests.fakes.modelscope_hub import FakeModelScope
from tests.fakes.server import Fault
from tests.fakes.uploads import ReceivesUploads

TOKEN = "hf_pushSecret0123456789abcdef"
MS_TOKEN = "ms-pushSecret-0123-4567-89ab-cdef01234567"
REPO = "me/smol-grpo"
FAST = RetryPolicy(attempts=3, initial_wait_s=0.0, max_wait_s=0.0)
# Bigger than one read chunk of the loopback server, so the PUT body really streams.
GGUF_SIZE = 3 * 1024 * 1024 + 17
MS_PRIVATE = 1  # ModelScope's Visibility for a private repository


@pytest.fixture(autouse=True)
def _plain_lfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """hf_xet is installed and would be used for uploads; the fake speaks plain LFS only."""
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The user's home (and ModelScope's config dir in it), so tests can see what lands there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MODELSCOPE_HOME", raising=False)
    return home


@pytest.fixture
def hub() -> Iterator[FakeHFHub]:
    with FakeHFHub(token=TOKEN) as server:
        yield server


@pytest.fixture
def ms() -> Iterator[FakeModelScope]:
    with FakeModelScope(token=MS_TOKEN) as server:
        yield server


def endpoints(hf: str | None = None, modelscope: str | None = None) -> EndpointsConfig:
    """The hubs at these URLs; one left out is a closed loopback port, never a public host."""
    return EndpointsConfig(
        hf_endpoint=hf or closed_loopback_url(),
        modelscope_endpoint=modelscope or closed_loopback_url(),
    )


@pytest.fixture
def exports(tmp_path: Path) -> tuple[Path, ExportManifest]:
    """An exports directory with a LoRA, a GGUF and its Modelfile, and their manifest."""
    root = tmp_path / "exports"
    lora = root / "lora"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}\n')
    (lora / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (lora / "tokenizer.json").write_text('{"model": {"type": "BPE"}}\n')
    gguf_dir = root / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "SmolLM2-GRPO-Q4_K_M.gguf").write_bytes(os.urandom(GGUF_SIZE))
    (gguf_dir / "Modelfile").write_text("FROM ./SmolLM2-GRPO-Q4_K_M.gguf\n")
    manifest = ExportManifest(base_model=SMOLLM2_ID, adapter_sha256="ab" * 32, created="")
    manifest.artefacts["lora"] = describe("lora", lora, root)
    manifest.artefacts["gguf-q4_k_m"] = describe(
        "gguf-q4_k_m", gguf_dir / "SmolLM2-GRPO-Q4_K_M.gguf", root, quantization="Q4_K_M"
    )
    manifest.artefacts["ollama"] = describe(
        "ollama", gguf_dir / "Modelfile", root, gguf="gguf-q4_k_m"
    )
    write_manifest(root, manifest)
    return root, manifest


def _all_files(manifest: ExportManifest, formats: list[str] | None = None) -> dict[str, str]:
    return {
        f.path: f.sha256
        for fmt, art in manifest.artefacts.items()
        if formats is None or fmt in formats
        for f in art.files
    }


def assert_arrived(hub: ReceivesUploads, repo_id: str, expected: dict[str, str]) -> None:
    """Every file of `expected` (path -> sha256) is in `repo_id` on `hub`, byte for byte."""
    for path, sha256 in expected.items():
        assert hashlib.sha256(hub.pushed_bytes(repo_id, path)).hexdigest() == sha256, path


def test_push_uploads_every_artefact_byte_identical(
    hub: FakeHFHub,
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)

    records = push(root, manifest, [f"hf:{REPO}"], endpoints=endpoints(hub.url), policy=FAST)

    assert len(hub.requests("/api/repos/create", "POST")) == 1
    assert len(hub.commits) == 1, "every artefact goes up in one commit"
    expected = _all_files(manifest)
    assert sorted(hub.commits[0].paths) == sorted(expected)
    assert_arrived(hub, REPO, expected)
    # Weights and the GGUF went through LFS (batch, PUT, verify); small text inline.
    lfs_puts = hub.requests("/_lfs/upload/", "PUT")
    sizes = {r.path.rsplit("/", 1)[1]: int(r.headers["content-length"]) for r in lfs_puts}
    gguf = expected["gguf/SmolLM2-GRPO-Q4_K_M.gguf"]
    assert sizes == {gguf: GGUF_SIZE, expected["lora/adapter_model.safetensors"]: 4096}
    assert len(hub.requests("/_lfs/verify", "POST")) == 2
    # Every API request carried the token; the storage PUTs (presigned on the hub) did not.
    assert {r.auth for r in hub.records if r not in lfs_puts} == {f"Bearer {TOKEN}"}
    assert {r.auth for r in lfs_puts} == {None}
    [record] = records
    assert record.commit_sha == hub.commits[0].sha
    assert record.url == f"{hub.url}/{REPO}/commit/{record.commit_sha}" and record.hub == "hf"
    assert record.target == f"hf:{REPO}" and sorted(record.files) == sorted(expected)
    # The token is nowhere in what we logged or returned.
    assert TOKEN not in record.model_dump_json()
    assert caplog.records, "the push logs what it does"
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_push_chosen_formats_only_and_again_into_the_existing_repo(
    hub: FakeHFHub, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    first = push(
        root, manifest, [f"hf:{REPO}"], endpoints=endpoints(hub.url), formats=["lora"], policy=FAST
    )
    assert sorted(hub.commits[0].paths) == sorted(_all_files(manifest, ["lora"]))
    assert first[0].formats == ["lora"]

    # The repository exists now (create answers 409, which exist_ok accepts).
    second = push(
        root,
        manifest,
        [f"hf:{REPO}"],
        endpoints=endpoints(hub.url),
        formats=["ollama"],
        policy=FAST,
    )
    # The Modelfile takes the GGUF it points at along.
    assert hub.commits[1].paths == ["gguf/Modelfile", "gguf/SmolLM2-GRPO-Q4_K_M.gguf"]
    assert second[0].formats == ["ollama", "gguf-q4_k_m"]
    assert second[0].commit_sha != first[0].commit_sha
    assert (
        hub.pushed_bytes(REPO, "lora/adapter_config.json")
        == (root / "lora/adapter_config.json").read_bytes()
    )


@pytest.mark.parametrize(
    ("missing", "present", "where"),
    [
        ("HF_TOKEN", ("MODELSCOPE_API_TOKEN", MS_TOKEN), "huggingface.co"),
        ("MODELSCOPE_API_TOKEN", ("HF_TOKEN", TOKEN), "modelscope.cn"),
    ],
)
def test_a_missing_token_refuses_before_any_request(
    hub: FakeHFHub,
    ms: FakeModelScope,
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
    present: tuple[str, str],
    where: str,
) -> None:
    root, manifest = exports
    monkeypatch.setenv(*present)
    with pytest.raises(EnvironmentUnfit) as caught:
        push(
            root,
            manifest,
            [f"hf:{REPO}", f"modelscope:{REPO}"],
            endpoints=endpoints(hub.url, ms.url),
            policy=FAST,
        )
    assert caught.value.exit_code == 3
    assert f"{missing} is not set" in str(caught.value)
    assert where in str(caught.value)  # the hint says where to get one
    assert hub.records == [] and ms.records == []


def test_503_on_commit_is_retried(
    hub: FakeHFHub, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.faults.add(r"/commit/main$", Fault.http(503, retry_after=0), methods=("POST",))
    slept: list[float] = []

    [record] = push(
        root,
        manifest,
        [f"hf:{REPO}"],
        endpoints=endpoints(hub.url),
        policy=FAST,
        sleep=slept.append,
    )

    commits = hub.requests(r"/commit/main$", "POST")
    assert [r.status for r in commits] == [503, 200]
    assert slept == [0.0]
    assert len(hub.commits) == 1 and record.commit_sha == hub.commits[0].sha
    assert_arrived(hub, REPO, _all_files(manifest))


def test_401_is_not_retried_and_the_error_hides_the_token(
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    with FakeHFHub(token="hf_theRightOne") as hub:
        with pytest.raises(PushFailed) as caught:
            push(root, manifest, [f"hf:{REPO}"], endpoints=endpoints(hub.url), policy=FAST)
        creates = hub.requests("/api/repos/create", "POST")
        commits = hub.requests("/commit/", "POST")
    assert [r.status for r in creates] == [401]
    assert len(commits) <= 1 and all(r.status == 401 for r in commits)
    assert "401" in str(caught.value) and f"hf:{REPO}" in str(caught.value)
    assert caught.value.exit_code == 8
    assert TOKEN not in str(caught.value)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_both_hubs_in_one_push_survive_in_the_manifest(
    exports: tuple[Path, ExportManifest],
    hub: FakeHFHub,
    ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, manifest = exports
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_TOKEN)
    manifest.pushes = push(
        root,
        manifest,
        [f"hf:{REPO}", "modelscope:them/smol"],
        endpoints=endpoints(hub.url, ms.url),
        policy=FAST,
    )
    hf_record, ms_record = manifest.pushes
    assert (hf_record.hub, ms_record.hub) == ("hf", "modelscope")
    assert hf_record.commit_sha == hub.commits[0].sha and ms_record.commit_sha is None
    expected = _all_files(manifest)
    assert sorted(hub.commits[0].paths) == sorted(ms.commits[0].paths) == sorted(expected)
    assert_arrived(ms, "them/smol", expected)
    # Each hub saw its own token only.
    assert {r.auth for r in hub.records if "/_lfs/upload/" not in r.path} == {f"Bearer {TOKEN}"}
    assert {r.auth for r in ms.records} == {f"Bearer {MS_TOKEN}"}
    write_manifest(root, manifest)
    again = read_manifest(root, manifest.base_model, manifest.adapter_sha256)
    assert again.pushes == manifest.pushes
    text = (root / "manifest.json").read_text()
    assert TOKEN not in text and MS_TOKEN not in text


# -- ModelScope --------------------------------------------------------------------------------
def _ms_push(
    root: Path, manifest: ExportManifest, ms: FakeModelScope, **kwargs: object
) -> list[PushRecord]:
    return push(
        root,
        manifest,
        [f"modelscope:{REPO}"],
        endpoints=endpoints(modelscope=ms.url),
        policy=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


def test_modelscope_push_uploads_every_artefact_byte_identical(
    ms: FakeModelScope,
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    _home: Path,
    root_records: list[logging.LogRecord],
) -> None:
    root, manifest = exports
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_TOKEN)
    caplog.set_level(logging.DEBUG)

    [record] = _ms_push(root, manifest, ms)

    assert len(ms.commits) == 1, "every artefact goes up in one commit"
    expected = _all_files(manifest)
    assert sorted(ms.commits[0].paths) == sorted(expected)
    assert_arrived(ms, REPO, expected)
    assert ms.visibility == {REPO: MS_PRIVATE}, "a repository we create is private"
    # Weights and the GGUF went as blobs (one batch negotiation, one PUT each); text inline.
    [batch] = ms.requests(r"/info/lfs/objects/batch$", "POST")
    puts = {
        r.path.rsplit("/", 1)[1]: int(r.headers["content-length"]) for r in ms.requests("/_oss/")
    }
    gguf = expected["gguf/SmolLM2-GRPO-Q4_K_M.gguf"]
    assert batch.status == 200
    assert puts == {gguf: GGUF_SIZE, expected["lora/adapter_model.safetensors"]: 4096}
    assert all(r.auth == f"Bearer {MS_TOKEN}" for r in ms.records)
    assert record.hub == "modelscope" and record.target == f"modelscope:{REPO}"
    assert record.url == f"{ms.url}/models/{REPO}" and record.commit_sha is None
    assert sorted(record.files) == sorted(expected)
    # The token is nowhere: not in the record, the logs, the output, the exports or the home.
    assert MS_TOKEN not in record.model_dump_json()
    assert caplog.records and all(MS_TOKEN not in r.getMessage() for r in caplog.records)
    # The client's own logger went through the root handlers (and so through the token filter).
    assert any(r.name.startswith("modelscope_hub") for r in root_records)
    out, err = capfd.readouterr()
    assert MS_TOKEN not in out + err
    assert "Upload Report" not in out, "the client's report must not reach stdout (--json)"
    written = [p for p in [*root.rglob("*"), *_home.rglob("*")] if p.is_file()]
    assert not any(MS_TOKEN.encode() in p.read_bytes() for p in written)
    assert not list(root.rglob(".ms_upload*")), "no upload cache left in exports/"


def test_modelscope_chosen_formats_only_and_again_into_the_existing_repo(
    ms: FakeModelScope, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_TOKEN)

    [first] = _ms_push(root, manifest, ms, formats=["lora"])
    assert ms.commits[0].paths == sorted(_all_files(manifest, ["lora"]))
    assert first.formats == ["lora"]

    [second] = _ms_push(root, manifest, ms, formats=["ollama"])
    # The repository existed: creating it again was refused and the push went into it.
    creates = ms.requests(r"^/api/v1/models$", "POST")
    assert [r.status for r in creates][2:] == [400, 400]
    assert len(ms.commits) == 2
    assert ms.commits[1].paths == ["gguf/Modelfile", "gguf/SmolLM2-GRPO-Q4_K_M.gguf"]
    assert second.formats == ["ollama", "gguf-q4_k_m"]
    assert (
        ms.pushed_bytes(REPO, "lora/adapter_config.json")
        == (root / "lora/adapter_config.json").read_bytes()
    )


def test_modelscope_503_on_commit_is_retried(
    ms: FakeModelScope, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_TOKEN)
    ms.faults.add(r"/commit/master$", Fault.http(503), methods=("POST",))

    _ms_push(root, manifest, ms)

    commits = ms.requests(r"/commit/master$", "POST")
    assert [r.status for r in commits] == [503, 200]
    assert len(ms.commits) == 1
    assert_arrived(ms, REPO, _all_files(manifest))


def test_modelscope_503_on_create_is_retried_by_our_policy(
    ms: FakeModelScope, exports: tuple[Path, ExportManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = exports
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_TOKEN)
    ms.faults.add(r"^/api/v1/models$", Fault.http(503), methods=("POST",))
    slept: list[float] = []

    _ms_push(root, manifest, ms, sleep=slept.append)

    creates = ms.requests(r"^/api/v1/models$", "POST")
    assert [r.status for r in creates] == [503, 200, 400]
    assert slept == [0.0] and len(ms.commits) == 1


def test_modelscope_401_is_not_retried_and_the_error_hides_the_token(
    exports: tuple[Path, ExportManifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    root, manifest = exports
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_TOKEN)
    caplog.set_level(logging.DEBUG)
    slept: list[float] = []
    with FakeModelScope(token="ms-theRightOne") as ms:
        with pytest.raises(PushFailed) as caught:
            _ms_push(root, manifest, ms, sleep=slept.append)
        statuses = [(r.method, r.path, r.status) for r in ms.records]
    assert statuses == [("POST", "/api/v1/models", 401)], "refused once, nothing after"
    assert slept == []
    message = str(caught.value)
    assert "401" in message and f"modelscope:{REPO}" in message
    assert "MODELSCOPE_API_TOKEN" in message  # the hint names the variable, never its value
    cause: BaseException | None = caught.value
    while cause is not None:  # nor does any error in the chain carry the token
        assert MS_TOKEN not in f"{cause} {cause!r}"
        cause = cause.__cause__ or cause.__context__
    assert all(MS_TOKEN not in r.getMessage() for r in caplog.records)
    out, err = capfd.readouterr()
    assert MS_TOKEN not in out + err


# -- the command line --------------------------------------------------------------------------
def _fake_workspace(root: Path) -> Workspace:
    """A workspace as fetch + train leave it, as far as the lora export reads it (no model)."""
    ws = Workspace(root)
    base = ws.model_dir(SMOLLM2_ID)
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "llama"}\n')
    (base / "tokenizer_config.json").write_text('{"model_max_length": 8192}\n')
    (base / "tokenizer.json").write_text('{"model": {"type": "BPE"}}\n')
    ws.lora.mkdir(parents=True)
    (ws.lora / "adapter_config.json").write_text('{"r": 8, "base_model_name_or_path": "/x"}\n')
    (ws.lora / "adapter_model.safetensors").write_bytes(os.urandom(8192))
    return ws


def test_cli_export_pushes_to_both_hubs(tmp_path: Path, hub: FakeHFHub, ms: FakeModelScope) -> None:
    ws = _fake_workspace(tmp_path / "ws")
    env = {
        "HF_TOKEN": TOKEN,
        "MODELSCOPE_API_TOKEN": MS_TOKEN,
        "GRPO_BOOTSTRAP_HF_ENDPOINT": hub.url,
        "GRPO_BOOTSTRAP_MODELSCOPE_ENDPOINT": ms.url,
    }
    args = ["--json", "--workspace", str(ws.root), "--set", f"model={SMOLLM2_ID}", "export"]
    args += ["--formats", "lora", "--push", f"hf:{REPO}", "--push", "modelscope:c/d"]

    result = CliRunner().invoke(main, args, env=env)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # exactly one JSON document on stdout
    assert [p["target"] for p in document["pushes"]] == [f"hf:{REPO}", "modelscope:c/d"]
    on_disk = json.loads((ws.exports / "manifest.json").read_text())
    assert on_disk["pushes"] == document["pushes"]
    for entry in document["artefacts"]["lora"]["files"]:
        for pushed in (
            hub.pushed_bytes(REPO, entry["path"]),
            ms.pushed_bytes("c/d", entry["path"]),
        ):
            assert hashlib.sha256(pushed).hexdigest() == entry["sha256"], entry["path"]
    written = [p.read_bytes() for p in ws.root.rglob("*") if p.is_file()]
    for token in (TOKEN, MS_TOKEN):
        assert token not in result.stdout and token not in result.stderr
        assert not any(token.encode() in data for data in written), "a token in the workspace"


def test_cli_export_without_the_modelscope_token_exits_3_before_any_work(
    tmp_path: Path, ms: FakeModelScope
) -> None:
    ws = _fake_workspace(tmp_path / "ws")
    args = ["--workspace", str(ws.root), "--set", f"model={SMOLLM2_ID}", "export"]
    args += ["--formats", "lora", "--push", "modelscope:c/d"]

    result = CliRunner().invoke(main, args, env={"GRPO_BOOTSTRAP_MODELSCOPE_ENDPOINT": ms.url})

    assert result.exit_code == 3, result.output
    assert "MODELSCOPE_API_TOKEN is not set" in result.output
    assert "modelscope.cn" in result.output
    # Detection may have probed the endpoint's reachability; the hub's API saw nothing.
    assert ms.requests("/api/") == [] and not ws.exports.exists()


@pytest.mark.slow
def test_export_with_push_uploads_and_records_the_commit(
    tmp_path: Path, smollm2_dir: Path, hub: FakeHFHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    plan, ws = make_lora_workspace(
        tmp_path / "ws", smollm2_dir, push=[f"hf:{REPO}"], hf_endpoint=hub.url, offline=False
    )

    manifest = export(plan, ws, ["lora"])

    [record] = manifest.pushes
    assert record.commit_sha == hub.commits[0].sha and record.formats == ["lora"]
    for entry in manifest.artefacts["lora"].files:
        pushed = hub.pushed_bytes(REPO, entry.path)
        assert hashlib.sha256(pushed).hexdigest() == entry.sha256, entry.path
    on_disk = read_manifest(ws.exports, manifest.base_model, manifest.adapter_sha256)
    assert on_disk.pushes == [record]


@pytest.mark.slow
def test_export_with_push_and_no_token_fails_before_any_work(
    tmp_path: Path, smollm2_dir: Path, hub: FakeHFHub
) -> None:
    plan, ws = make_lora_workspace(
        tmp_path / "ws", smollm2_dir, push=[f"hf:{REPO}"], hf_endpoint=hub.url, offline=False
    )
    with pytest.raises(EnvironmentUnfit, match="HF_TOKEN is not set"):
        export(plan, ws, ["lora"])
    assert not ws.exports.exists()
    # Building the (online) plan probed the endpoint's reachability; its API saw nothing.
    assert hub.requests("/api/") == []


def test_a_manifest_from_before_modelscope_pushes_still_reads(exports) -> None:
    root, manifest = exports
    data = json.loads((root / "manifest.json").read_text())
    data["pushes"] = [{
        "target": f"hf:{REPO}", "commit_url": f"https://huggingface.co/{REPO}/commit/abc",
        "commit_sha": "abc", "formats": ["lora"], "files": ["lora/adapter_config.json"],
    }]  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(data))
    again = read_manifest(root, manifest.base_model, manifest.adapter_sha256)
    assert set(again.artefacts) == set(manifest.artefacts)  # nothing to rebuild
    (record,) = again.pushes
    assert (record.hub, record.url) == ("hf", f"https://huggingface.co/{REPO}/commit/abc")


def test_offline_export_refuses_to_push_before_any_work(
    tmp_path: Path, hub: FakeHFHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    ws = _fake_workspace(tmp_path / "ws")
    args = ["--workspace", str(ws.root), "--set", f"model={SMOLLM2_ID}", "export", "--offline"]
    args += ["--formats", "lora", "--push", f"hf:{REPO}"]

    result = CliRunner().invoke(main, args, env={"GRPO_BOOTSTRAP_HF_ENDPOINT": hub.url})

    assert result.exit_code == 2, result.output
    assert "--offline uses no network" in result.output
    assert hub.records == [] and not ws.exports.exists()
