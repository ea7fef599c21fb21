"""`fetch`: the model and the dataset into the workspace, from the first mirror that delivers.

For each artefact, mirrors are tried in the plan's order.  On each mirror: describe the
revision (commit, files, sizes, hashes), check the disk, download with the hub's own client,
verify every file, all under the retry policy.  Only a verified snapshot is moved into place
(an atomic rename), and only then is it recorded in <workspace>/manifest.json, so a partial or
corrupt file never counts as done.  Downloads land in a per-mirror staging directory that the
next run resumes.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from bootstrap.errors import EnvironmentUnfit, MirrorsFailed
from bootstrap.hub.clients import Snapshot, client_for
from bootstrap.hub.dataset import load_splits, write_splits
from bootstrap.hub.retry import RetryPolicy, call_with_retries, describe
from bootstrap.hub.sources import Source, artefact
from bootstrap.hub.verify import FileRecord, verify_file
from bootstrap.plan import Plan
from bootstrap.workspace import Workspace, write_json_atomic

log = logging.getLogger(__name__)

# Weights as safetensors only: pickled formats can run code when loaded.
MODEL_ALLOW = ("*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "LICENSE*")
MODEL_IGNORE = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.msgpack", "*.h5", "*.onnx", "*.gguf", "original/*")
DATASET_ALLOW_EXT = ("*.parquet", "*.jsonl", "*.json", "*.csv")
DISK_MARGIN_BYTES = 512 * 2**20


class Attempt(BaseModel, frozen=True):
    mirror: str
    endpoint: str
    attempts: int
    error: str


class FetchRecord(BaseModel, frozen=True):
    """What the manifest says about one artefact: where it came from and what was verified."""

    kind: Literal["model", "dataset"]
    repo_id: str
    mirror: str
    endpoint: str
    revision: str
    path: str
    files: list[FileRecord]
    outputs: list[FileRecord] = []  # the dataset's normalised splits
    failed_mirrors: list[Attempt] = []
    fetched_at: str
    seconds: float


class Manifest(BaseModel):
    model: FetchRecord | None = None
    dataset: FetchRecord | None = None


def read_manifest(workspace: Workspace) -> Manifest:
    if not workspace.manifest.is_file():
        return Manifest()
    return Manifest.model_validate_json(workspace.manifest.read_text(encoding="utf-8"))


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(dest: Path, snapshot: Snapshot, staging: Path) -> None:
    """Exit 3 before the first byte when the files still to fetch don't fit."""
    present = sum(
        (staging / f.path).stat().st_size for f in snapshot.files if (staging / f.path).is_file()
    )
    need = max(0, snapshot.total_size - present) + DISK_MARGIN_BYTES
    free = _free_bytes(dest)
    if need > free:
        raise EnvironmentUnfit(
            f"not enough disk at {dest}: need {need / 2**30:.2f} GiB "
            f"({snapshot.total_size / 2**30:.2f} GiB to fetch plus margin), {free / 2**30:.2f} GiB free",
            hint="free some space or point --workspace at a larger disk",
        )


class _Mirror:
    """One mirror's try at one artefact, counting attempts for the failure report."""

    def __init__(self, source: Source, policy: RetryPolicy, trusted: Sequence[str]) -> None:
        self.source = source
        self.policy = policy
        self.client = client_for(source, trusted)
        self.attempts = 0
        self.last_error: BaseException | None = None

    def _note(self, attempt: int, error: BaseException) -> None:
        self.attempts += 1
        self.last_error = error

    def run(self, what: str, fn):
        label = f"{what} from {self.source.mirror}"
        return call_with_retries(fn, self.policy, what=label, on_attempt=self._note)

    def failure(self) -> Attempt:
        return Attempt(
            mirror=self.source.mirror,
            endpoint=self.source.endpoint,
            attempts=self.attempts,
            error=describe(self.last_error),
        )


def _fetch_snapshot(
    sources: Sequence[Source],
    *,
    kind: Literal["model", "dataset"],
    dest: Path,
    allow: Sequence[str],
    ignore: Sequence[str],
    policy: RetryPolicy,
    trusted: Sequence[str],
    progress: bool,
    inspect: Callable[[Path, list[FileRecord], Source], Any] | None = None,
) -> tuple[Source, Snapshot, list[FileRecord], list[Attempt], Any]:
    """The first mirror's verified snapshot, moved to `dest`.  `inspect(staging, records,
    source)` may reject intact files that hold the wrong thing; the next mirror is then tried."""
    failures: list[Attempt] = []
    for source in sources:
        mirror = _Mirror(source, policy, trusted)
        staging = dest.parent / f".{dest.name}.partial-{source.mirror}"
        try:
            snapshot = mirror.run(f"{kind} listing", lambda: mirror.client.describe(source, allow, ignore))
            if not snapshot.files:
                raise FileNotFoundError(f"{source.repo_id}@{snapshot.revision} has no files matching {list(allow)}")
            if kind == "model" and not any(f.path.endswith(".safetensors") for f in snapshot.files):
                raise FileNotFoundError(f"{source.repo_id} has no safetensors weights (pickled weights are not loaded)")
            check_disk(dest, snapshot, staging)

            def download_and_verify() -> list[FileRecord]:
                mirror.client.download(source, snapshot, staging, progress)
                return [verify_file(staging / f.path, f) for f in snapshot.files]

            records = mirror.run(f"{kind} download", download_and_verify)
            inspected = inspect(staging, records, source) if inspect else None
        except EnvironmentUnfit:
            raise
        except Exception as exc:  # every other failure of a mirror moves on to the next one
            if mirror.last_error is None:
                mirror.attempts, mirror.last_error = 1, exc
            failures.append(mirror.failure())
            log.warning("%s: %s failed after %d attempt(s): %s", kind, source.mirror, mirror.attempts, describe(exc))
            continue
        _replace_dir(staging, dest)
        return source, snapshot, records, failures, inspected
    lines = "\n  ".join(f"{f.mirror} ({f.endpoint}): {f.error} after {f.attempts} attempt(s)" for f in failures)
    raise MirrorsFailed(
        f"every mirror failed for the {kind}:\n  {lines}",
        hint="check the network or a proxy (HTTPS_PROXY), force one with --mirror, "
        "add a company mirror with GRPO_BOOTSTRAP_EXTRA_MIRRORS=name=https://..., "
        "or copy the files into the workspace and use --offline",
    )


def _replace_dir(staging: Path, dest: Path) -> None:
    """Move a verified staging dir into place; the old copy goes only after the new one is whole."""
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def fetch(
    plan: Plan,
    workspace: Workspace,
    *,
    policy: RetryPolicy | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Manifest:
    """Fetch whatever the manifest doesn't already hold for this plan; return the manifest."""
    config = plan.config
    policy = policy or RetryPolicy(
        attempts=config.fetch_attempts,
        max_seconds=config.fetch_max_seconds,
        initial_wait_s=config.fetch_backoff_s,
        max_wait_s=config.fetch_max_wait_s,
    )
    offline = config.offline if offline is None else offline
    manifest = read_manifest(workspace)
    if offline:
        missing = missing_offline(plan, workspace, manifest)
        if missing:
            raise EnvironmentUnfit(
                "offline, and the workspace lacks:\n  " + "\n  ".join(missing),
                hint="run `grpo-bootstrap fetch` once with network, or copy the files there",
            )
        return manifest
    trusted = ["huggingface", *(e.partition("=")[0] for e in config.extra_mirrors)]
    common = dict(policy=policy, trusted=trusted, progress=progress)

    if not _is_current(manifest.model, plan.model_sources, workspace):
        dest = workspace.model_dir(config.model)
        started = time.monotonic()
        source, snapshot, records, failures, _ = _fetch_snapshot(
            plan.model_sources, kind="model", dest=dest, allow=MODEL_ALLOW, ignore=MODEL_IGNORE, **common
        )
        manifest.model = _record("model", source, snapshot, dest, records, failures, started)
        write_json_atomic(workspace.manifest, manifest.model_dump(mode="json"))

    if not _is_current(manifest.dataset, plan.dataset_sources, workspace):
        art = artefact(config, "dataset")
        raw = workspace.data_dir / "raw"
        prefix = f"{art.config_name}/" if art.config_name else ""
        started = time.monotonic()

        def splits(staging: Path, records: list[FileRecord], source: Source) -> Any:
            return load_splits(staging, [r.path for r in records], art.hf_id, art.config_name)

        source, snapshot, records, failures, tables = _fetch_snapshot(
            plan.dataset_sources, kind="dataset", dest=raw,
            allow=[prefix + ext for ext in DATASET_ALLOW_EXT], ignore=(), inspect=splits, **common,
        )  # fmt: skip
        record = _record("dataset", source, snapshot, raw, records, failures, started)
        outputs = write_splits(tables, workspace)
        manifest.dataset = record.model_copy(update={"outputs": outputs})
        write_json_atomic(workspace.manifest, manifest.model_dump(mode="json"))
    return manifest


def _record(kind, source, snapshot, dest, records, failures, started) -> FetchRecord:
    return FetchRecord(
        kind=kind,
        repo_id=source.repo_id,
        mirror=source.mirror,
        endpoint=source.endpoint,
        revision=snapshot.revision,
        path=str(dest),
        files=records,
        failed_mirrors=failures,
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - started, 2),
    )


def _is_current(record: FetchRecord | None, sources: Sequence[Source], workspace: Workspace) -> bool:
    """Done means: recorded for one of this plan's ids, and every recorded file still whole."""
    if record is None or record.repo_id not in {s.repo_id for s in sources}:
        return False
    root = Path(record.path)
    files = [(root / f.path, f) for f in record.files] + [
        (workspace.root / f.path, f) for f in record.outputs
    ]
    return all(path.is_file() and path.stat().st_size == f.size for path, f in files)


def missing_offline(plan: Plan, workspace: Workspace, manifest: Manifest) -> list[str]:
    """What an offline run would lack, one line each (empty when everything is there)."""
    missing = []
    if not _is_current(manifest.model, plan.model_sources, workspace):
        missing.append(f"model {plan.config.model} (expected in {workspace.model_dir(plan.config.model)})")
    if not _is_current(manifest.dataset, plan.dataset_sources, workspace):
        missing.append(f"dataset {plan.config.dataset} (expected in {workspace.data_dir})")
    return missing
