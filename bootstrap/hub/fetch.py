"""`fetch`: the model and the dataset into the workspace, from the first mirror that delivers.

The model and the dataset are fetched at the same time (they are independent).  For each,
mirrors are tried in the plan's order.  On each mirror: describe the revision (commit, files,
sizes, hashes), check the disk, download (aria2c over several connections per file on HF-API
mirrors where it is installed, else the hub's own client), verify every file, all under the
retry policy.  Only a verified snapshot is moved into place (an atomic rename), and only then is
it recorded in <workspace>/manifest.json, so a partial or corrupt file never counts as done.
Downloads land in a per-mirror staging directory that the next run resumes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from bootstrap.config import HUGGINGFACE, JobConfig
from bootstrap.errors import BootstrapError, ConfigError, EnvironmentUnfit, MirrorsFailed
from bootstrap.hub import aria2
from bootstrap.hub.clients import HubClient, Snapshot, Transfer, client_for
from bootstrap.hub.dataset import load_splits, local_splits, write_splits
from bootstrap.hub.progress import ProgressBoard, bytes_on_disk
from bootstrap.hub.retry import RetryPolicy, call_with_retries, describe, is_not_found
from bootstrap.hub.verify import FileRecord, Verifier, record
from bootstrap.integrity import FileState, check
from bootstrap.planning.plan import Plan
from bootstrap.planning.sources import Source, artefact
from bootstrap.task.dataset import columns_of
from bootstrap.workspace import Workspace, replace_dir, write_json_atomic

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")  # a full commit id, as hubs record what they served

# Weights as safetensors only: pickled formats can run code when loaded.
MODEL_ALLOW = ("*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "LICENSE*")
MODEL_IGNORE = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
    "*.msgpack",
    "*.h5",
    "*.onnx",
    "*.gguf",
    "original/*",
)
DATASET_ALLOW_EXT = ("*.parquet", "*.jsonl", "*.json", "*.csv")
DISK_MARGIN_BYTES = 512 * 2**20


class Attempt(BaseModel, frozen=True):
    mirror: str
    endpoint: str
    attempts: int
    error: str
    repo: str = ""  # the id and revision this mirror was asked for, "id@revision"
    not_found: bool = False  # the mirror said they do not exist


class Phases(BaseModel, frozen=True):
    """Where an artefact's seconds went on the mirror that delivered it (all attempts there)."""

    describe: float = 0.0
    download: float = 0.0
    verify: float = 0.0
    move: float = 0.0


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
    downloader: str = ""  # aria2c, huggingface_hub or modelscope
    phases: Phases = Phases()


class Manifest(BaseModel):
    model: FetchRecord | None = None
    dataset: FetchRecord | None = None


def read_manifest(workspace: Workspace) -> Manifest:
    """The manifest; an empty one when there is none or it cannot be read (a truncated file),
    which costs verifying or fetching again, never trusting what it no longer vouches for."""
    if not workspace.manifest.is_file():
        return Manifest()
    try:
        return Manifest.model_validate_json(workspace.manifest.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s cannot be read (%s): what it listed is fetched and verified again",
                    workspace.manifest, str(exc).splitlines()[0])  # fmt: skip
        return Manifest()


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


class DiskBudget:
    """Free disk shared by the downloads running at once: each must fit beside what the others
    still have to write (their totals less what already is in their staging directories)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[Path, int] = {}  # staging dir -> bytes it will hold

    @staticmethod
    def _to_come(staging: Path, total: int) -> int:
        return max(0, total - bytes_on_disk(staging))

    @contextlib.contextmanager
    def claim(self, dest: Path, snapshot: Snapshot, staging: Path) -> Iterator[None]:
        """Exit 3 before the first byte when the files still to fetch don't fit."""
        with self._lock:
            mine = self._to_come(staging, snapshot.total_size)
            others = sum(self._to_come(path, total) for path, total in self._claims.items())
            need, free = mine + others + DISK_MARGIN_BYTES, _free_bytes(dest)
            if need > free:
                raise EnvironmentUnfit(
                    f"not enough disk at {dest}: need {need / 2**30:.2f} GiB "
                    f"({mine / 2**30:.2f} GiB to fetch, {others / 2**30:.2f} GiB for the other "
                    f"download, plus margin), {free / 2**30:.2f} GiB free",
                    hint="free some space or point --workspace at a larger disk",
                )
            self._claims[staging] = snapshot.total_size
        try:
            yield
        finally:
            with self._lock:
                self._claims.pop(staging, None)


class Downloads(BaseModel, frozen=True):
    """What every download of this fetch shares: retries, the downloader, the stall limit."""

    policy: RetryPolicy
    trusted: list[str]  # mirrors that may see HF_TOKEN
    aria2c: str | None  # its path, when HF-API mirrors are fetched through it
    connections: int
    stall_s: float


class _Mirror:
    """One mirror's try at one artefact, counting attempts for the failure report."""

    def __init__(self, source: Source, downloads: Downloads) -> None:
        self.source = source
        self.policy = downloads.policy
        self.client = client_for(source, downloads.trusted)
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
            repo=f"{self.source.repo_id}@{self.source.revision or 'main'}",
            not_found=self.last_error is not None and is_not_found(self.last_error),
        )


class _Delivered(BaseModel, frozen=True):
    """A mirror's verified snapshot, and what it took."""

    source: Source
    snapshot: Snapshot
    records: list[FileRecord]
    failures: list[Attempt]
    downloader: str
    phases: Phases
    inspected: Any = None


def _downloader(source: Source, downloads: Downloads) -> str:
    if source.kind == "modelscope":
        return "modelscope"
    return "aria2c" if downloads.aria2c else "huggingface_hub"


def _download_and_verify(
    client: HubClient,
    source: Source,
    snapshot: Snapshot,
    staging: Path,
    transfer: Transfer,
    spent: dict[str, float],
) -> list[FileRecord]:
    """One attempt: download `snapshot` into `staging`, hashing each file as it arrives; the
    seconds spent downloading and then verifying what was left are added to `spent`."""
    with Verifier(staging, snapshot.files) as verifier:
        transfer.on_file = verifier.start
        started = time.monotonic()
        try:
            client.download(source, snapshot, staging, transfer)
        finally:
            spent["download"] += time.monotonic() - started
        started = time.monotonic()  # what is left to verify once all arrived
        try:
            return verifier.finish()
        finally:
            spent["verify"] += time.monotonic() - started


def _fetch_snapshot(
    sources: Sequence[Source],
    *,
    kind: Literal["model", "dataset"],
    dest: Path,
    allow: Sequence[str],
    ignore: Sequence[str],
    downloads: Downloads,
    disk: DiskBudget,
    board: ProgressBoard,
    inspect: Callable[[Path, list[FileRecord], Source], Any] | None = None,
) -> _Delivered:
    """The first mirror's verified snapshot, moved to `dest`.  `inspect(staging, records,
    source)` may reject intact files that hold the wrong thing; the next mirror is then tried."""
    failures: list[Attempt] = []
    for source in sources:
        mirror = _Mirror(source, downloads)
        staging = dest.parent / f".{dest.name}.partial-{source.mirror}"
        spent = dict.fromkeys(Phases.model_fields, 0.0)
        try:
            started = time.monotonic()
            snapshot = mirror.run(
                f"{kind} listing", functools.partial(mirror.client.describe, source, allow, ignore)
            )
            spent["describe"] = time.monotonic() - started
            if not snapshot.files:
                raise FileNotFoundError(
                    f"{source.repo_id}@{snapshot.revision} has no files matching {list(allow)}"
                )
            if kind == "model" and not any(f.path.endswith(".safetensors") for f in snapshot.files):
                raise FileNotFoundError(
                    f"{source.repo_id} has no safetensors weights (pickled weights are not loaded)"
                )
            bar = board.bar(f"{kind} from {source.mirror}", snapshot.total_size)
            transfer = Transfer(
                downloads.aria2c if source.kind == "hf" else None, downloads.connections,
                downloads.stall_s, bar,
            )  # fmt: skip
            attempt = functools.partial(
                _download_and_verify, mirror.client, source, snapshot, staging, transfer, spent
            )
            with disk.claim(dest, snapshot, staging):
                records = mirror.run(f"{kind} download", attempt)
            inspected = inspect(staging, records, source) if inspect else None
        except EnvironmentUnfit:
            raise
        except Exception as exc:  # every other failure of a mirror moves on to the next one  # noqa: BLE001
            if mirror.last_error is None:
                mirror.attempts, mirror.last_error = 1, exc
            failures.append(mirror.failure())
            log.warning(
                "%s: %s failed after %d attempt(s): %s",
                kind,
                source.mirror,
                mirror.attempts,
                describe(exc),
            )
            continue
        started = time.monotonic()
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # the hub client's own records
        replace_dir(staging, dest)
        spent["move"] = time.monotonic() - started
        return _Delivered(
            source=source, snapshot=snapshot, records=records, failures=failures,
            downloader=_downloader(source, downloads), inspected=inspected,
            phases=Phases(**{name: round(value, 3) for name, value in spent.items()}),
        )  # fmt: skip
    if failures and all(f.not_found for f in failures):
        asked = "\n  ".join(f"{f.mirror} ({f.endpoint}): {f.repo}: {f.error}" for f in failures)
        raise ConfigError(
            f"the {kind} was not found on any mirror:\n  {asked}",
            hint=f"check the {kind} id and revision (--set {kind}=..., {kind}_revision=...; "
            f"on ModelScope modelscope_{kind}=...); a private or gated repository also needs "
            "HF_TOKEN",
        )
    lines = "\n  ".join(
        f"{f.mirror} ({f.endpoint}): {f.repo}: {f.error} after {f.attempts} attempt(s)"
        for f in failures
    )
    raise MirrorsFailed(
        f"every mirror failed for the {kind}:\n  {lines}",
        hint="check the network or a proxy (HTTPS_PROXY), force one with --mirror, "
        "add a company mirror with GRPO_BOOTSTRAP_EXTRA_MIRRORS=name=https://..., "
        "or copy the files into the workspace and use --offline",
    )


def _downloads(config: JobConfig, policy: RetryPolicy | None) -> Downloads:
    aria2c = aria2.find_aria2c() if config.fetch_downloader != "hub" else None
    if aria2c is None and config.fetch_downloader == "aria2c":
        raise EnvironmentUnfit(
            "fetch_downloader is aria2c, and no aria2c is on PATH",
            hint="install it (apt-get install aria2) or set fetch_downloader=auto",
        )
    if config.fetch_downloader == "auto" and aria2c is None:
        log.info("aria2c not found: HF-API mirrors are fetched by huggingface_hub, one connection "
                 "per file (install aria2 for mirrors that cap each connection)")  # fmt: skip
    return Downloads(
        policy=policy or RetryPolicy(
            attempts=config.fetch_attempts, max_seconds=config.fetch_max_seconds,
            initial_wait_s=config.fetch_backoff_s, max_wait_s=config.fetch_max_wait_s,
        ),
        trusted=[HUGGINGFACE, *(e.partition("=")[0] for e in config.extra_mirrors)],
        aria2c=aria2c, connections=config.fetch_connections, stall_s=config.fetch_stall_s,
    )  # fmt: skip


def fetch(
    plan: Plan,
    workspace: Workspace,
    *,
    policy: RetryPolicy | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Manifest:
    """Fetch whatever the manifest doesn't already hold for this plan; return the manifest.

    The model and the dataset download at once; each is recorded as soon as it is verified,
    so one that failed never costs the other its place in the manifest.
    """
    config = plan.config
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
    downloads = _downloads(config, policy)
    disk = DiskBudget()
    jobs: dict[str, Callable[[ProgressBoard], FetchRecord]] = {}
    if not _is_current(manifest.model, plan.model_sources, _model_root(plan, workspace), workspace):
        jobs["model"] = lambda board: _fetch_model(plan, workspace, downloads, disk, board)
    if not _is_current(manifest.dataset, plan.dataset_sources, _dataset_root(workspace), workspace):
        jobs["dataset"] = lambda board: _fetch_dataset(plan, workspace, downloads, disk, board)
    failed: dict[str, BootstrapError] = {}
    with (
        ProgressBoard(progress) as board,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="fetch") as pool,
    ):
        futures = {pool.submit(job, board): kind for kind, job in jobs.items()}
        for future in as_completed(futures):
            kind = futures[future]
            try:
                record = future.result()
            except BootstrapError as exc:
                failed[kind] = exc
                continue
            setattr(manifest, kind, record)  # only this thread writes the manifest
            write_json_atomic(workspace.manifest, manifest.model_dump(mode="json"))
    if failed:
        raise _one_error([failed[kind] for kind in jobs if kind in failed])
    return manifest


def _one_error(errors: list[BootstrapError]) -> BootstrapError:
    """What to raise when one or both downloads failed: a full disk first (exit 3); both
    artefacts' mirror reports in one message when every mirror failed for each."""
    unfit = [e for e in errors if isinstance(e, EnvironmentUnfit)]
    if unfit or len(errors) == 1 or not all(isinstance(e, MirrorsFailed) for e in errors):
        return (unfit or errors)[0]
    return MirrorsFailed("\n".join(e.message for e in errors), hint=errors[0].hint)


def _fetch_model(
    plan: Plan, workspace: Workspace, downloads: Downloads, disk: DiskBudget, board: ProgressBoard
) -> FetchRecord:
    dest = _model_root(plan, workspace)
    started = time.monotonic()
    delivered = _fetch_snapshot(
        plan.model_sources, kind="model", dest=dest, allow=MODEL_ALLOW, ignore=MODEL_IGNORE,
        downloads=downloads, disk=disk, board=board,
    )  # fmt: skip
    return _record("model", delivered, dest.relative_to(workspace.root), started)


def _fetch_dataset(
    plan: Plan, workspace: Workspace, downloads: Downloads, disk: DiskBudget, board: ProgressBoard
) -> FetchRecord:
    if plan.dataset_sources and plan.dataset_sources[0].kind == "local":
        return _local_dataset(plan, workspace)
    art = artefact(plan.config, "dataset")
    raw = _dataset_root(workspace)
    prefix = f"{art.config_name}/" if art.config_name else ""
    started = time.monotonic()
    config = plan.config

    def splits(staging: Path, records: list[FileRecord], source: Source) -> Any:
        return load_splits(
            staging, [r.path for r in records], art.hf_id, art.config_name, columns_of(config),
            eval_fraction=config.eval_fraction, seed=config.train.seed,
        )  # fmt: skip

    delivered = _fetch_snapshot(
        plan.dataset_sources, kind="dataset", dest=raw, allow=[prefix + ext for ext in DATASET_ALLOW_EXT],
        ignore=(), inspect=splits, downloads=downloads, disk=disk, board=board,
    )  # fmt: skip
    outputs = write_splits(delivered.inspected, workspace)
    record = _record("dataset", delivered, raw.relative_to(workspace.root), started)
    return record.model_copy(update={"outputs": outputs})


def _local_dataset(plan: Plan, workspace: Workspace) -> FetchRecord:
    """A dataset on this machine: read where it is, verified by the sha256 of its files (a
    changed file makes it read again), written in the splits' one form."""
    config = plan.config
    started = time.monotonic()
    source = Path(config.dataset)
    tables, files = local_splits(
        source, columns_of(config), eval_fraction=config.eval_fraction, seed=config.train.seed
    )
    base = source if source.is_dir() else source.parent
    records = [record(f, f.relative_to(base).as_posix()) for f in files]
    outputs = write_splits(tables, workspace)
    digest = hashlib.sha256("".join(r.sha256 for r in records).encode()).hexdigest()
    return FetchRecord(
        kind="dataset", repo_id=config.dataset, mirror="local", endpoint=f"file://{base}",
        revision=digest[:16], path=str(base), files=records, outputs=outputs,
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - started, 2), downloader="local",
    )  # fmt: skip


def _record(
    kind: Literal["model", "dataset"], delivered: _Delivered, dest: Path, started: float
) -> FetchRecord:
    return FetchRecord(
        kind=kind,
        repo_id=delivered.source.repo_id,
        mirror=delivered.source.mirror,
        endpoint=delivered.source.endpoint,
        revision=delivered.snapshot.revision,
        path=dest.as_posix(),  # relative to the workspace: a moved or copied one still checks
        files=delivered.records,
        failed_mirrors=delivered.failures,
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - started, 2),
        downloader=delivered.downloader,
        phases=delivered.phases,
    )


def _changes(record: FetchRecord | None, sources: Sequence[Source], root: Path,
             workspace: Workspace) -> list[str] | None:  # fmt: skip
    """What no longer matches the manifest's record (integrity.check: sizes always, contents
    where a modification time moved); None when nothing usable is recorded for this plan.
    Downloaded files are looked for under `root`; a local dataset's where they were read."""
    if record is None or record.repo_id not in {s.repo_id for s in sources}:
        return None
    moved = _pin_moved(record, sources)
    if moved:
        return [moved]
    base = Path(record.path) if record.mirror == "local" else root
    files = [FileState(**f.model_dump()) for f in record.files]
    outputs = [FileState(**f.model_dump()) for f in record.outputs]
    return check(base, files).problems + check(workspace.root, outputs).problems


def _pin_moved(record: FetchRecord, sources: Sequence[Source]) -> str | None:
    """Why `record` is not the commit this plan pins on its mirror, or None.

    Only a pinned commit (40 hex digits) can be compared: a branch or tag resolves to a commit
    only by asking the hub, which a finished fetch never does again (it must work offline).
    """
    pins = {s.revision for s in sources if (s.mirror, s.repo_id) == (record.mirror, record.repo_id)}
    commits = {pin for pin in pins if pin and _COMMIT.fullmatch(pin)}
    if not commits or record.revision in commits:
        return None
    return f"fetched at {record.revision[:12]}, the plan pins {min(commits)[:12]}"


def _is_current(record: FetchRecord | None, sources: Sequence[Source], root: Path,
                workspace: Workspace) -> bool:  # fmt: skip
    """Done means: recorded for one of this plan's ids, and every recorded file as verified."""
    problems = _changes(record, sources, root, workspace)
    if problems:
        log.warning("%s: changed since it was fetched (%s): fetching it again",
                    record.repo_id if record else "-", "; ".join(problems[:3]))  # fmt: skip
    return problems == []


def missing_offline(plan: Plan, workspace: Workspace, manifest: Manifest) -> list[str]:
    """What an offline run would lack, one line each (empty when everything is there)."""
    missing = []
    checks = (
        ("model", plan.config.model, manifest.model, plan.model_sources, _model_root(plan, workspace)),
        ("dataset", plan.config.dataset, manifest.dataset, plan.dataset_sources, _dataset_root(workspace)),
    )  # fmt: skip
    for kind, repo, fetched, sources, root in checks:
        problems = _changes(fetched, sources, root, workspace)
        if problems is None:
            missing.append(f"{kind} {repo} (expected in {root.relative_to(workspace.root)})")
        elif problems:
            missing.append(f"{kind} {repo}: " + "; ".join(problems))
    return missing


def _model_root(plan: Plan, workspace: Workspace) -> Path:
    return workspace.model_dir(plan.config.model)


def _dataset_root(workspace: Workspace) -> Path:
    return workspace.data_dir / "raw"
