"""The environment of the processes we start: our own code importable, output unbuffered, and
NVLink multicast off for every launch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bootstrap import constants as C


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that re-enters our code with `python -m bootstrap...`.

    It imports the same `bootstrap` as this process: a source checkout run with `python -m`
    would otherwise lose to an installed copy.  Output is unbuffered so that a child that dies
    has still said what it was doing.
    """
    env = C.current_environment() if environ is None else dict(environ)
    package_root = str(Path(__file__).resolve().parents[2])
    if package_root not in _site_dirs():  # an installed copy is found anyway; a checkout not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _site_dirs() -> set[str]:
    import site

    return {str(Path(d).resolve()) for d in (*site.getsitepackages(), site.getusersitepackages())}


def launch_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the launcher and every rank: a child's (child_environment), with
    NVLink multicast forced off, and torch's agent, if it ever has to pass a SIGTERM on (the
    fallback), waiting RANK_SHUTDOWN_GRACE_S before killing (torch >= 2.12 reads the variable).
    """
    env = child_environment(environ)
    env.update(C.NVLINK_MULTICAST_OFF)
    env.setdefault(C.TORCH_ELASTIC_SHUTDOWN_TIMEOUT, str(C.RANK_SHUTDOWN_GRACE_S))
    return env
