"""The ModelScope half of `export --push`: modelscope_hub's own create_repo and upload_folder.

What modelscope-hub 0.5.1 (under modelscope 1.40.2) sends, on its legacy /api/v1 surface, with
the token as cookie ``m_session_id`` and as ``Authorization: Bearer`` on every request:

    POST {endpoint}/api/v1/models                      create the repository, private; a taken
                                                       name answers 400 (business code
                                                       10010101001, AlreadyExistsError): reused
    POST {endpoint}/api/v1/models                      upload_folder's own create-if-missing,
                                                       whose refusal it ignores
    POST {endpoint}/api/v1/repos/models/{repo}/info/lfs/objects/batch
                                                       which blobs the hub still needs
    PUT  {href of the batch answer}                    each such blob (weights, GGUF, tokenizer)
    POST {endpoint}/api/v1/repos/models/{repo}/commit/master
                                                       one commit: small files inline in base64,
                                                       weights and files over 64 KiB by sha256

The client splits a commit only past 256 files or 8 MiB of inline content, far above an export.
It retries blob PUTs and the commit itself (5 attempts, then recovery rounds: about a minute for
a hub that keeps answering 503; 429's Retry-After honoured) and then raises StorageError, which
the caller's policy does not repeat; errors before the upload (creating the repository, a
dropped connection) reach that policy as they are.  Unlike huggingface_hub's create_commit, a
failed upload is not all-or-nothing: when a blob cannot be stored, the client still commits the
files that made it, then raises; pushing again completes the repository (stored blobs are
reused).  The token is handed to the client, which keeps it in its in-memory session; login() is
never called, because it saves the token and cookies under ~/.modelscope/credentials.  The
client's own writes there are a random session id for its user-agent, and nothing else: no
upload cache (use_cache=False keeps .ms_upload_cache out of exports/).  Its report goes to
stdout, which belongs to --json, so it is caught and logged at debug level; its logger, which
has a stderr handler of its own, goes through ours for the upload, so -q/-v and the token filter
apply to it too.

The client reports no commit id, so a push record holds the repository page, not a commit.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from bootstrap.hub.clients import MODELSCOPE_LOGGER
from bootstrap.logs import through_our_handlers

__all__ = ["push_modelscope"]

log = logging.getLogger(__name__)


def push_modelscope(
    endpoint: str, token: str, repo_id: str, exports: Path, files: Sequence[str], message: str
) -> str:
    """Upload `files` (paths under `exports`) to model `repo_id`, created private if missing.

    Returns the repository's page.  Raises the client's errors (modelscope_hub.HubError and its
    subclasses, which carry the HTTP status).
    """
    from modelscope_hub import HubApi
    from modelscope_hub.errors import AlreadyExistsError

    api = HubApi(endpoint=endpoint, token=token)
    report = io.StringIO()
    with through_our_handlers(MODELSCOPE_LOGGER):
        try:
            api.create_repo(repo_id, "model", visibility="private")
            log.info("created private model repository %s on ModelScope", repo_id)
        except AlreadyExistsError:
            log.info("model repository %s exists on ModelScope: pushing into it", repo_id)
        with contextlib.redirect_stdout(report):
            api.upload_folder(
                repo_id,
                "model",
                exports,
                # Exact paths: escaped, since upload_folder matches them as fnmatch patterns.
                allow_patterns=[glob.escape(path) for path in files],
                commit_message=message,
                use_cache=False,
                disable_tqdm=True,
            )
    log.debug("modelscope upload report:\n%s", report.getvalue().strip())
    return f"{endpoint}/models/{repo_id}"
