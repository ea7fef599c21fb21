"""huggingface_hub's snapshot_download in a process of its own, so that fetch can stop it.

A download stuck in hf_xet (a storage host that cannot be reached is retried for a very long
time) cannot be interrupted inside the process that runs it; a worker process can be.  fetch
starts ``python -m bootstrap.hub.hf_worker`` per attempt with the environment of that attempt
(constants.hub_worker_env), the job as one JSON object on stdin, and reads one JSON line from
stdout: ``{"ok": true}``, or ``{"ok": false, "errors": [...]}`` with every exception of the
chain (class names, HTTP status, Retry-After, first line), which fetch raises again as
TransferError so that the retry policy judges it as if it had been raised in fetch itself.
The token is never in the job: the worker reads HF_TOKEN, which its environment holds only for
mirrors allowed to see it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from bootstrap import constants as C
from bootstrap.hub.retry import causes, own_status, retry_after_seconds
from bootstrap.launch.signals import die_with_parent
from bootstrap.logs import redact


class WorkerJob(BaseModel, frozen=True):
    repo_id: str
    repo_type: str
    revision: str
    endpoint: str
    local_dir: str
    files: list[str]
    send_token: bool
    parent: int  # fetch's pid: the worker goes when fetch does, however fetch ends


def error_chain(exc: BaseException) -> list[dict[str, Any]]:
    """Each exception of the chain as the parent rebuilds it (no traceback, token redacted)."""
    return [
        {
            "class_names": [cls.__name__ for cls in type(err).__mro__],
            "status_code": own_status(err),
            "retry_after": retry_after_seconds(err),
            "message": redact((str(err).strip().splitlines() or [""])[0]),
        }
        for err in causes(exc)
    ]


def run(job: WorkerJob) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        job.repo_id,
        repo_type=job.repo_type,
        revision=job.revision,  # the commit described, so a push in between can't mix
        local_dir=job.local_dir,
        allow_patterns=job.files,
        endpoint=job.endpoint,
        token=(C.hf_token() or False) if job.send_token else False,
    )


def main() -> int:
    job = WorkerJob.model_validate_json(sys.stdin.read())
    die_with_parent(job.parent)
    try:
        run(job)
    except Exception as exc:  # every failure goes back to fetch, which decides what it means  # noqa: BLE001
        print(json.dumps({"ok": False, "errors": error_chain(exc)}), flush=True)
        return 1
    print(json.dumps({"ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
