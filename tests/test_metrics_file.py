"""metrics.jsonl after a kill: a half-written last line is skipped, the rest kept, and resuming
writes a clean file; the reward curve read back from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootstrap.train.metrics import prune_metrics, read_metrics, reward_curve


def _write(path: Path, steps: int, torn: str) -> None:
    lines = [json.dumps({"step": n, "reward": n / 10}) for n in range(1, steps + 1)]
    path.write_text("\n".join(lines) + "\n" + torn)


def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    _write(path, 3, '{"step": 4, "rew')
    assert [line["step"] for line in read_metrics(path)] == [1, 2, 3]
    assert "line 4 is not a step record" in caplog.text


def test_resuming_drops_the_torn_line_so_the_next_step_starts_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    _write(path, 3, '{"step": 4, "rew')
    assert prune_metrics(path, keep_through_step=3) == 0  # no step record dropped ...
    assert path.read_text().endswith("}\n")  # ... but the torn tail is gone
    with path.open("a") as handle:  # what the metrics callback does next
        handle.write(json.dumps({"step": 4, "reward": 0.4}) + "\n")
    assert [line["step"] for line in read_metrics(path)] == [1, 2, 3, 4]


def _write_rewards(path: Path, rewards: list[float | None]) -> None:
    path.write_text(
        "".join(json.dumps({"step": n, "reward": r}) + "\n" for n, r in enumerate(rewards, 1))
    )


def test_the_reward_curve_means_the_first_and_the_last_ten_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _write_rewards(path, [0.1] * 9 + [0.2] + [5.0] * 5 + [1.0] * 9 + [0.9])
    curve = reward_curve(read_metrics(path))
    assert curve is not None and (curve.steps, curve.window) == (25, 10)
    assert curve.first == pytest.approx(0.11) and curve.last == pytest.approx(0.99)


def test_a_short_run_is_cut_in_halves_and_steps_without_a_reward_are_left_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    _write_rewards(path, [0.0, None, 1.0, 2.0, 3.0])
    curve = reward_curve(list(reversed(read_metrics(path))))  # the steps' order, not the lines'
    assert curve is not None and (curve.steps, curve.window) == (4, 2)
    assert (curve.first, curve.last) == (0.5, 2.5)
    _write_rewards(path, [0.7])
    one = reward_curve(read_metrics(path))
    assert one is not None and (one.window, one.first, one.last) == (1, 0.7, 0.7)


def test_no_reward_logged_is_no_curve(tmp_path: Path) -> None:
    assert reward_curve(read_metrics(tmp_path / "missing.jsonl")) is None
    path = tmp_path / "metrics.jsonl"
    _write_rewards(path, [None, None])
    assert reward_curve(read_metrics(path)) is None
