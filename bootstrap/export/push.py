"""`export --push hf:OWNER/NAME` / `modelscope:OWNER/NAME`: the exported artefacts on a hub.

Every chosen artefact goes up in one commit per target, at the same paths it has under exports/
(lora/, merged16/, gguf/...), so the repository mirrors the manifest.  Hugging Face goes through
huggingface_hub (create_repo, exist_ok, then create_commit); ModelScope through modelscope_hub
(push_modelscope.py: the repository is created private, an existing one is reused).  Tokens come
from HF_TOKEN and MODELSCOPE_API_TOKEN and are checked before any work or request; each is handed
to its hub's client only and never logged, raised or recorded.  A transient failure (5xx, 429, a
dropped connection) repeats that target's whole create-and-upload under the hubs' retry policy;
a refusal (401, 403, 404) does not.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from bootstrap import constants as C
from bootstrap.config import EndpointsConfig
from bootstrap.errors import ConfigError, EnvironmentUnfit, PushFailed
from bootstrap.hub.retry import RetryPolicy, call_with_retries, describe
from bootstrap.logs import redact

from .manifest import ExportManifest, PushRecord
from .push_modelscope import push_modelscope

__all__ = ["check_targets", "push"]

log = logging.getLogger(__name__)


# The variable each hub's token comes from, and where to get one.
TOKENS = {
    "hf": ("HF_TOKEN", C.hf_token, "https://huggingface.co/settings/tokens"),
    "modelscope": (
        "MODELSCOPE_API_TOKEN",
        C.modelscope_token,
        "https://modelscope.cn/my/myaccesstoken",
    ),
}


def check_targets(targets: Sequence[str]) -> None:
    """Refuse, before any work or request, pushes that cannot succeed from here.

    Raises ConfigError for a target that is not hf:OWNER/NAME or modelscope:OWNER/NAME, and
    EnvironmentUnfit (exit 3) when a target's hub has no token in the environment.
    """
    hubs = {target.partition(":")[0] for target in targets}
    unknown = [t for t in targets if t.partition(":")[0] not in TOKENS]
    if unknown:
        raise ConfigError(
            f"cannot push to {', '.join(unknown)}",
            hint="push to hf:OWNER/NAME (Hugging Face) or modelscope:OWNER/NAME",
        )
    for hub, (variable, token, where) in TOKENS.items():
        if hub in hubs and not token():
            raise EnvironmentUnfit(
                f"{variable} is not set",
                hint=f"export {variable}=<a token with write access from {where}>",
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
    endpoint: str, repo_id: str, exports: Path, files: list[str], message: str
) -> tuple[str, str | None]:
    """(commit URL, commit sha) of one create-repo-and-commit."""
    api = HfApi(endpoint=endpoint, token=C.hf_token())
    api.create_repo(repo_id, exist_ok=True)
    info = api.create_commit(
        repo_id,
        operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=exports / p) for p in files],
        commit_message=message,
    )
    return info.commit_url, info.oid


def _push_modelscope(
    endpoint: str, repo_id: str, exports: Path, files: list[str], message: str
) -> tuple[str, str | None]:
    """(repository URL, None): the ModelScope client reports no commit id."""
    token = C.modelscope_token() or ""  # set: check_targets ran first
    return push_modelscope(endpoint, token, repo_id, exports, files, message), None


def push(
    exports: Path,
    manifest: ExportManifest,
    targets: Sequence[str],
    *,
    endpoints: EndpointsConfig,
    formats: Sequence[str] | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PushRecord]:
    """Upload the chosen formats (default: every artefact in `manifest`) to each target.

    `targets` are "hf:OWNER/NAME" or "modelscope:OWNER/NAME", pushed in order to the hubs at
    `endpoints`; files are read from `exports`.  Raises what check_targets raises, and
    BootstrapError naming the target when a hub refuses or retries run out.
    """
    check_targets(targets)
    chosen, files = _chosen(manifest, formats)
    message = f"grpo-bootstrap export of {manifest.base_model}: {', '.join(chosen)}"
    uploaders = {
        "hf": functools.partial(_push_hf, endpoints.hf_endpoint),
        "modelscope": functools.partial(_push_modelscope, endpoints.modelscope_endpoint),
    }
    records: list[PushRecord] = []
    for target in targets:
        hub, _, repo_id = target.partition(":")
        log.info("pushing %d files (%s) to %s", len(files), ", ".join(chosen), target)
        try:
            url, sha = call_with_retries(
                functools.partial(uploaders[hub], repo_id, exports, files, message),
                policy or RetryPolicy(),
                what=f"push to {target}",
                sleep=sleep,
            )
        except Exception as exc:
            raise PushFailed(
                redact(f"push to {target} failed: {describe(exc)}"),
                hint=f"check that {TOKENS[hub][0]} may write to that repository",
                again="to try again",
            ) from exc
        log.info("pushed to %s: %s", target, url)
        records.append(
            PushRecord(target=target, hub=hub, url=url, commit_sha=sha, formats=chosen, files=files)
        )
    return records
