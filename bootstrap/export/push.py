"""`export --push hf:OWNER/NAME`: the exported artefacts uploaded to a Hugging Face repository.

Every chosen artefact goes up in one commit, at the same paths it has under exports/ (lora/,
merged16/, gguf/...), so the repository mirrors the manifest.  The token comes from HF_TOKEN and
is checked before any work; it is handed to huggingface_hub only and never logged, raised or
recorded.  A transient failure (5xx, 429, a dropped connection) repeats the whole
create-and-commit under the hubs' retry policy; a refusal (401, 403, 404) does not.

ModelScope targets are refused up front: that upload path is not built yet.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from bootstrap import constants as C
from bootstrap.errors import BootstrapError, ConfigError, EnvironmentUnfit
from bootstrap.hub.retry import RetryPolicy, call_with_retries, describe
from bootstrap.logs import redact

from .manifest import ExportManifest, PushRecord

__all__ = ["check_targets", "push"]

log = logging.getLogger(__name__)


def check_targets(targets: Sequence[str]) -> None:
    """Refuse, before any work or request, pushes that cannot succeed from here.

    Raises ConfigError for a hub other than Hugging Face and EnvironmentUnfit (exit 3) when
    HF_TOKEN is not set.
    """
    others = [t for t in targets if not t.startswith("hf:")]
    if others:
        raise ConfigError(
            f"push to {', '.join(others)} is not supported yet",
            hint="push to a Hugging Face repository (hf:OWNER/NAME) instead",
        )
    if targets and not C.hf_token():
        raise EnvironmentUnfit(
            "HF_TOKEN is not set",
            hint="export HF_TOKEN=<a write token from https://huggingface.co/settings/tokens>",
        )


def _chosen(manifest: ExportManifest, formats: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(formats, file paths) to upload: the requested formats the manifest holds, or all.

    A Modelfile is useless without its GGUF, so the GGUF it names goes with it.
    """
    chosen = [f for f in manifest.artefacts if formats is None or f in formats]
    needed = manifest.artefacts["ollama"].details.get("gguf") if "ollama" in chosen else None
    if isinstance(needed, str) and needed in manifest.artefacts and needed not in chosen:
        chosen.append(needed)
    if not chosen:
        raise ConfigError(
            "nothing to push: no exported artefact of the chosen formats",
            hint="run `grpo-bootstrap export` with the formats to push first",
        )
    files = sorted({entry.path for f in chosen for entry in manifest.artefacts[f].files})
    return chosen, files


def _push_hf(
    api: HfApi, repo_id: str, exports: Path, files: list[str], message: str
) -> tuple[str, str]:
    """(commit URL, commit sha) of one create-repo-and-commit."""
    api.create_repo(repo_id, exist_ok=True)
    info = api.create_commit(
        repo_id,
        operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=exports / p) for p in files],
        commit_message=message,
    )
    return info.commit_url, info.oid


def push(
    exports: Path,
    manifest: ExportManifest,
    targets: Sequence[str],
    *,
    hf_endpoint: str,
    formats: Sequence[str] | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PushRecord]:
    """Upload the chosen formats (default: every artefact in `manifest`) to each target.

    `targets` are "hf:OWNER/NAME"; files are read from `exports`.  Raises what check_targets
    raises, and BootstrapError naming the target when the hub refuses or retries run out.
    """
    check_targets(targets)
    chosen, files = _chosen(manifest, formats)
    api = HfApi(endpoint=hf_endpoint, token=C.hf_token())
    message = f"grpo-bootstrap export of {manifest.base_model}: {', '.join(chosen)}"
    records: list[PushRecord] = []
    for target in targets:
        repo_id = target.removeprefix("hf:")
        log.info("pushing %d files (%s) to %s", len(files), ", ".join(chosen), target)
        try:
            url, sha = call_with_retries(
                functools.partial(_push_hf, api, repo_id, exports, files, message),
                policy or RetryPolicy(),
                what=f"push to {target}",
                sleep=sleep,
            )
        except Exception as exc:
            raise BootstrapError(
                redact(f"push to {target} failed: {describe(exc)}"),
                hint="check that HF_TOKEN may write to that repository and try again",
            ) from exc
        log.info("pushed to %s: %s", target, url)
        records.append(
            PushRecord(target=target, commit_url=url, commit_sha=sha, formats=chosen, files=files)
        )
    return records
