"""The loopback Hugging Face Hub of the tests: the package's LocalHub plus faults and records.

The HTTP API itself (repo info, tree, paths-info, resolve with Range) is
:class:`bootstrap.demo.hub.LocalHub`, the server `run --demo` uses; here it only gains the
fault injection and request recording of :class:`tests.fakes.server.LoopbackServer`, so tests
can break it on purpose and see what the real clients sent.
"""

from __future__ import annotations

from bootstrap.demo.hub import LocalHub, LocalRepo, RepoFile, commit_sha_for
from tests.fakes.server import LoopbackServer

__all__ = ["FakeHFHub", "FakeRepo", "RepoFile", "commit_sha_for"]

# The fake hubs' name for a repository served from a directory (FakeModelScope uses it too).
FakeRepo = LocalRepo


class FakeHFHub(LoopbackServer, LocalHub):
    """Loopback Hugging Face Hub.  Use as a context manager; ``url`` is the endpoint to use.

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` (else 401).
    ``tree_page_size``: entries per /tree page before a ``Link: rel="next"`` is sent.
    """
