"""report_to: TensorBoard, W&B and Trackio write their runs into the workspace, with no network."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from bootstrap.config import load_config
from bootstrap.detect import detect
from bootstrap.errors import ConfigError
from bootstrap.pipeline.isolation import run_isolated
from bootstrap.pipeline.stages import STAGE_BY_NAME
from bootstrap.pipeline.state import fingerprints
from bootstrap.planning.plan import build_plan
from bootstrap.train.metrics import read_metrics
from bootstrap.train.tracking import PROJECT, tracking_environment, trackio_elsewhere
from tests.test_train import FLAGS, make_plan, make_workspace

WANDB_KEY = "wandb-key-that-must-never-be-written-0123456789"


def plan_with(tmp_path: Path, **flags: Any):
    config = load_config(environ={}, flags={**FLAGS, "workspace": tmp_path, **flags}).config
    return build_plan(config, detect(config))


@pytest.mark.parametrize(
    ("text", "trackers"),
    [
        ("none", []),
        ("tensorboard", ["tensorboard"]),
        ("tensorboard, wandb", ["tensorboard", "wandb"]),
    ],
)
def test_report_to_reads_none_one_or_a_list(text: str, trackers: list[str]) -> None:
    environ = {"GRPO_BOOTSTRAP_REPORT_TO": text}
    assert load_config(environ=environ, flags={}).config.train.report_to == trackers


def test_an_unknown_tracker_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, flags={"report_to": ["mlflow"]})
    assert "report_to" in str(caught.value) and "tensorboard" in str(caught.value)


def test_a_tracker_that_is_not_installed_fails_at_plan_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails, as if absent
    with pytest.raises(ConfigError) as caught:
        plan_with(tmp_path, report_to=["tensorboard", "wandb"])
    assert "report_to wandb: not installed" in str(caught.value)
    assert "grpo-bootstrap[tracking]" in (caught.value.hint or "")


def test_choosing_trackers_does_not_make_the_training_run_again(tmp_path: Path) -> None:
    without = fingerprints(plan_with(tmp_path))
    with_trackers = fingerprints(plan_with(tmp_path, report_to=["tensorboard", "trackio"]))
    assert without == with_trackers


@pytest.mark.parametrize(
    ("environ", "offline", "mode"),
    [
        ({}, False, "offline"),  # no key: nowhere to send it
        ({"WANDB_API_KEY": WANDB_KEY}, True, "offline"),  # the job said no network
        ({"WANDB_API_KEY": WANDB_KEY}, False, "online"),
        ({"WANDB_API_KEY": WANDB_KEY, "WANDB_MODE": "disabled"}, False, "disabled"),  # theirs
    ],
)
def test_wandb_goes_online_only_with_a_key_and_the_network(
    tmp_path: Path, environ: dict[str, str], offline: bool, mode: str
) -> None:
    values = tracking_environment(["wandb"], tmp_path, offline=offline, environ=environ)
    assert values["WANDB_MODE"] == mode
    assert values["WANDB_PROJECT"] == PROJECT
    assert WANDB_KEY not in json.dumps(values)
    dirs = [Path(v) for k, v in values.items() if k.endswith("_DIR")]
    assert dirs and all(d.is_dir() and d.is_relative_to(tmp_path) for d in dirs)


def test_a_trackio_imported_before_its_directory_was_set_is_reported(tmp_path: Path) -> None:
    import trackio.utils

    values = tracking_environment(["trackio"], tmp_path, offline=True, environ={})
    assert trackio_elsewhere(values) == trackio.utils.TRACKIO_DIR != tmp_path / "trackio"
    assert trackio_elsewhere({"TRACKIO_DIR": str(trackio.utils.TRACKIO_DIR)}) is None
    assert trackio_elsewhere({}) is None  # Trackio not chosen


def test_no_tracker_sets_nothing(tmp_path: Path) -> None:
    assert tracking_environment([], tmp_path, offline=False, environ={}) == {}


@pytest.mark.slow
def test_every_tracker_records_the_run_inside_the_workspace_and_nothing_in_home(
    tmp_path: Path, tiny_qwen2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", home.as_posix())
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)  # the job is offline: it stays unused
    for name in (
        "WANDB_MODE",
        "WANDB_DIR",
        "TRACKIO_DIR",
        "TENSORBOARD_LOGGING_DIR",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    ws = make_workspace(tmp_path / "ws", tiny_qwen2_dir)
    plan = make_plan(ws, max_steps=2, save_steps=2, report_to=["tensorboard", "wandb", "trackio"])

    # Through the stage's own process, as `run` and `train` do: TRL imports Trackio as it is
    # imported, and Trackio fixes its directory then, so in this test process (where other tests
    # imported TRL long ago) it would write wherever HOME was at that time.
    run_isolated(STAGE_BY_NAME["train"], plan, ws, progress=False, verbosity=0)

    steps = [line["step"] for line in read_metrics(ws.metrics)]
    assert steps == [1, 2]  # metrics.jsonl is kept beside the trackers
    assert _tensorboard_rewards(ws.tracking / "tensorboard") == 2
    (run,) = (ws.tracking / "wandb" / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")), "W&B's offline run file"
    db = ws.tracking / "trackio" / f"{PROJECT}.db"
    assert _trackio_rewards(db) == 2  # the callback's finish() waits for its writer
    assert not [p for p in home.rglob("*") if p.is_file()], (
        "nothing is written to the home directory"
    )
    leaked = [
        p for p in ws.tracking.rglob("*") if p.is_file() and WANDB_KEY.encode() in p.read_bytes()
    ]
    assert not leaked


def _trackio_rewards(db: Path) -> int:
    """How many logged steps of Trackio's database hold the mean reward (0 while none is)."""
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute("SELECT metrics FROM metrics").fetchall()
        except sqlite3.OperationalError:  # the table is made with the first write
            return 0
    return sum("train/reward" in json.loads(m) for (m,) in rows)


def _tensorboard_rewards(logdir: Path) -> int:
    """How many steps' mean reward TensorBoard's event files hold."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in logdir.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return len(accumulator.Scalars("train/reward"))
