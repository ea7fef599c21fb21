"""The experiment trackers of `report_to`: where they write, and whether they go online.

TRL reports through transformers' callbacks, and each tracker takes its directories and mode
from environment variables it reads as its callback starts (Trackio when it is imported).  Left
alone they write under the home directory (~/.cache/wandb, ~/.config/wandb, HF_HOME/trackio)
or, for TensorBoard, among the checkpoints (output_dir/runs): the first is lost with a
container, the second mixed with what checkpoint rotation deletes.  Here every tracker writes
below <workspace>/tracking, and none needs a network:

- TensorBoard writes event files only.
- W&B runs offline (`wandb sync <workspace>/tracking/wandb/wandb/offline-run-*` uploads a run
  later) unless WANDB_API_KEY is set and the job is not offline; a WANDB_MODE of the user's own
  wins either way.
- Trackio keeps a local SQLite database (`trackio show` reads it); it syncs to a Space only when
  the user names one in TRACKIO_SPACE_ID.

metrics.jsonl and the report's plots are written whatever report_to says.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bootstrap import constants as C

PROJECT = "grpo-bootstrap"  # W&B's and Trackio's project, unless the user named another


def tracking_environment(
    report_to: list[str], root: Path, *, offline: bool, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables that send each tracker of `report_to` into `root` (created here)."""
    values: dict[str, str] = {}
    if "tensorboard" in report_to:
        values["TENSORBOARD_LOGGING_DIR"] = str(root / "tensorboard")
    if "wandb" in report_to:
        wandb = root / "wandb"
        values |= {
            "WANDB_DIR": str(wandb),  # its runs, in wandb/ below this
            "WANDB_CACHE_DIR": str(wandb / "cache"),
            "WANDB_CONFIG_DIR": str(wandb / "config"),
            "WANDB_DATA_DIR": str(wandb / "data"),
            "WANDB_PROJECT": C.wandb_project(environ) or PROJECT,
            "WANDB_MODE": C.wandb_mode(environ) or _wandb_mode(offline, environ),
        }
    if "trackio" in report_to:
        values["TRACKIO_DIR"] = str(root / "trackio")
    for name, value in values.items():
        if name.endswith("_DIR"):
            Path(value).mkdir(parents=True, exist_ok=True)
    return values


def trackio_elsewhere(values: Mapping[str, str]) -> Path | None:
    """Where Trackio writes if that is not the TRACKIO_DIR of `values`: Trackio reads the
    variable once, as it is imported, and TRL imports it with itself, so a process that imported
    TRL before the trackers were set up has Trackio writing under HF_HOME."""
    wanted = values.get("TRACKIO_DIR")
    imported = sys.modules.get("trackio.utils")
    if wanted is None or imported is None:
        return None
    where = Path(imported.TRACKIO_DIR)
    return None if where == Path(wanted) else where


def _wandb_mode(offline: bool, environ: Mapping[str, str] | None) -> str:
    return "online" if C.wandb_api_key(environ) and not offline else "offline"


def tracking_arguments(report_to: list[str], run_name: str) -> dict[str, Any]:
    """GRPOConfig fields: the trackers (TRL's "none" for none), the project and the run's name."""
    return {"report_to": list(report_to) or "none", "project": PROJECT, "run_name": run_name}
