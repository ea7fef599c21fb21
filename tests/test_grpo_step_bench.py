"""benchmarks/grpo_step.py's own logic: which weights a variant trains on, how a launch's
metrics lines are summarised (spikes, phases), the peer the ratios are taken against, and the
usage errors it gives before starting anything."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

from benchmarks.grpo_step import (
    launch_parts,
    main,
    peer_of,
    precision_flags,
    render,
    render_phases,
    split_name,
    summarise,
    write_timed,
)
from bootstrap.train.phases import PHASES


def _args(**values: object) -> argparse.Namespace:
    base = {"precision": None, "no_4bit": False, "profile": None, "on_cuda": True}
    return argparse.Namespace(**{**base, **values})


@pytest.mark.parametrize(
    ("values", "flags"),
    [
        ({}, {"load_in_4bit": True}),  # the comparison config: 4-bit on a GPU
        ({"on_cuda": False}, {"load_in_4bit": False}),
        ({"no_4bit": True}, {"load_in_4bit": False}),
        ({"profile": "gpu-80gb"}, {}),  # the profile decides (16-bit at 80 GB)
        ({"profile": "gpu-80gb", "precision": "4bit"}, {"load_in_4bit": True}),
        ({"precision": "4bit", "no_4bit": True}, {"load_in_4bit": True}),  # the name wins
        ({"precision": "16bit"}, {"load_in_4bit": False}),
    ],
)
def test_a_variant_trains_on_the_weights_it_names_else_the_profiles(
    values: dict[str, object], flags: dict[str, bool]
) -> None:
    assert precision_flags(_args(**values)) == flags


def test_a_variant_name_carries_an_optional_precision() -> None:
    assert split_name("unsloth-vllm:16bit") == ("unsloth-vllm", "16bit")
    assert split_name("trl-vllm") == ("trl-vllm", None)


def _line(step: int, seconds: float, generate: float) -> dict[str, object]:
    phases = dict.fromkeys(PHASES, 0.0) | {"generate": generate, "backward": seconds - generate}
    return {
        "step": step, "time": "2026-12-02T18:00:00+00:00", "step_seconds": seconds,
        "completion_tokens_per_s": 1600 / seconds, "completion_length": 200.0,
        "gpu_max_memory_allocated_bytes": 2 * 1024**3, "gpu_memory_used_bytes": 5 * 1024**3,
        "phase_seconds": phases,
    }  # fmt: skip


def test_the_summary_names_the_steps_past_one_and_a_half_times_the_median() -> None:
    seconds = [30.0, 2.0, 2.0, 2.1, 3.5, 1.9, 2.0]  # the first step compiles: not steady
    lines = [_line(i + 1, s, 0.5 * s) for i, s in enumerate(seconds)]
    summary = summarise(lines, baseline_used=1 * 1024**3)
    assert summary["first_step_s"] == 30.0 and summary["steady_s_per_step"] == 2.0
    assert summary["spike_steps"] == [5]
    assert summary["worst_step_ratio"] == pytest.approx(1.75)
    assert summary["phase_seconds"]["generate"] == pytest.approx(1.0)
    assert summary["peak_nvml_gib"] == pytest.approx(4.0)


def _row(variant: str, seconds: float) -> dict[str, object]:
    lines = [_line(i + 1, s, 0.4) for i, s in enumerate([9.0] + [seconds] * 5)]
    return {
        "variant": variant, "generation": "vllm", "load_in_4bit": False, "dtype": "bf16",
        "vllm_share": 0.3, "launch_to_first_step_s": 90.0, "profile": "gpu-80gb",
        "num_generations": 8, "max_completion_length": 200, "lora_rank": 64,
        "gpu_memory_limit_gib": None, **summarise(lines, None),
    }  # fmt: skip


def test_the_phase_table_sums_each_variants_phases_beside_its_step() -> None:
    rows = [_row("unsloth-vllm:16bit", 1.5), {"variant": "trl", "error": "exit 1"}]
    lines = render_phases(rows).splitlines()
    assert lines[2] == "| variant | " + " | ".join(PHASES) + " | sum | steady s/step |"
    # generate 0.4 and backward the rest of each 1.5 s step (_line), the other phases 0
    cells = ["0.400", "0.000", "0.000", "0.000", "0.000", "1.100", "0.000", "0.000"]
    assert lines[4:] == ["| unsloth-vllm:16bit | " + " | ".join(cells) + " | 1.500 | 1.500 |"]


def test_ratios_are_against_trl_with_vllm_when_it_ran_else_plain_trl() -> None:
    rows = [_row("trl", 8.0), _row("unsloth-vllm:16bit", 1.5), _row("trl-vllm:16bit", 2.25)]
    assert peer_of(rows) is rows[2]
    table = render(rows, argparse.Namespace(model="m", steps=6), "NVIDIA H200")
    assert "vs trl-vllm:16bit" in table
    assert "| unsloth-vllm:16bit | vllm | bf16 | 0.3 | 90.0 | 9.0 | 1.50 (n=5) |" in table
    assert table.splitlines()[4].endswith("| 0.28x |")  # trl: 2.25 / 8.0
    assert "| 1.50x |" in table  # 2.25 / 1.5
    assert peer_of([rows[0], rows[1]]) is rows[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backends", "unsloth-vllm:8bit"], "unknown backend"),
        (["--backends", "tgi"], "unknown backend"),
        (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
        (["--set", "max_steps"], "expected KEY=VALUE"),
        (["--steps", "3"], "at least 6"),
    ],
)
def test_bad_arguments_are_usage_errors_before_anything_runs(
    argv: list[str], message: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--work", str(tmp_path)])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no model built, no variant started


def test_a_variants_log_has_each_line_after_the_seconds_since_its_process_started(
    tmp_path: Path,
) -> None:
    script = "import sys, time\nprint('first')\ntime.sleep(0.6)\nprint('second', file=sys.stderr)\n"
    log = tmp_path / "variant.log"
    with log.open("w") as handle:
        code = write_timed([sys.executable, "-c", script], dict(os.environ), tmp_path, handle)
    lines = log.read_text().splitlines()
    assert code == 0
    assert [line.split()[1] for line in lines] == ["first", "second"]  # stderr too, in order
    seconds = [float(line.split()[0].rstrip("s")) for line in lines]
    assert seconds[0] < 0.6 <= seconds[1]


def test_a_variants_exit_code_comes_back_with_its_last_words(tmp_path: Path) -> None:
    log = tmp_path / "variant.log"
    with log.open("w") as handle:
        code = write_timed(
            [sys.executable, "-c", "print('dying'); raise SystemExit(7)"],
            dict(os.environ), tmp_path, handle,
        )  # fmt: skip
    assert code == 7
    assert log.read_text().split()[1:] == ["dying"]


def test_a_launch_is_split_at_vllms_own_lines_in_the_timestamped_log() -> None:
    log = (
        "    14.7s  Unsloth: Will patch your computer to enable 2x faster free finetuning.\n"
        "    43.6s  INFO 12-04 01:21:56 [api_utils.py:273] non-default args: {'dtype': "
        "torch.bfloat16, 'max_model_len': 1024}\n"
        "   115.1s  INFO 12-04 01:23:07 [monitor.py:53] torch.compile took 41.86 s in total\n"
        "   144.8s  INFO 12-04 01:23:37 [core.py:337] init engine (profile, create kv cache, "
        "warmup model) took 72.46 s (compilation: 41.86 s)\n"
    )
    assert launch_parts(log) == {
        "to_engine_args_s": 43.6,
        "engine_start_s": 72.46,
        "engine_compile_s": 41.86,
    }


def test_a_launch_without_vllm_has_no_engine_parts() -> None:
    log = "     3.0s  {'loss': 0.0, 'grad_norm': 0.1}\n     9.5s  done\n"
    assert launch_parts(log) == dict.fromkeys(
        ("to_engine_args_s", "engine_start_s", "engine_compile_s")
    )
