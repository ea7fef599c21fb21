"""benchmarks/rollout_timers.py: functions wrapped when their module is imported (or at once if
it already was), one line per call, and the lines read back from a variant's timestamped log.
The real targets (vLLM's LLM.generate, Unsloth's fold and restore) need a GPU; here a module
written to tmp_path stands in for them, imported by the real import system."""

from __future__ import annotations

import inspect
import io
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.grpo_step import render_first_rollouts, render_rollouts, write_timed
from benchmarks.rollout_timers import install, rollout_parts

ENGINE = """
class LLM:
    def generate(self, prompts, *, lora_request=None):
        return [p.upper() for p in prompts]

def load_lora(model, path, load_tensors=False):
    if path == "broken":
        raise RuntimeError("no adapter")
    return ("request", path)
"""
TARGETS = {
    "fake_engine": (
        ("LLM.generate", "decode"),
        ("load_lora", "adapter"),
        ("_merged_rollout_exact_fold", "fold"),  # absent here, as in an older release
    )
}


@pytest.fixture
def engine_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "fake_engine.py").write_text(ENGINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the finder leaves with the test
    monkeypatch.delitem(sys.modules, "fake_engine", raising=False)
    return tmp_path


def _timer_lines(out: io.StringIO) -> list[str]:
    return [line.split()[1] for line in out.getvalue().splitlines()]


def test_a_module_imported_later_has_its_functions_timed_and_unchanged(engine_dir: Path) -> None:
    out = io.StringIO()
    install(TARGETS, out)
    import fake_engine  # imported after install, as vLLM is by train()

    assert fake_engine.LLM().generate(["a", "b"], lora_request=None) == ["A", "B"]
    assert fake_engine.load_lora(None, "lora") == ("request", "lora")
    assert _timer_lines(out) == ["decode", "adapter"]
    # Callers that inspect the signature (Unsloth does) still see the original one.
    assert list(inspect.signature(fake_engine.LLM.generate).parameters) == [
        "self", "prompts", "lora_request",
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="no adapter"):
        fake_engine.load_lora(None, "broken")
    assert _timer_lines(out) == ["decode", "adapter", "adapter"]  # a failed call is timed too


def test_a_module_already_imported_is_wrapped_at_once(engine_dir: Path) -> None:
    import fake_engine

    out = io.StringIO()
    install(TARGETS, out)
    fake_engine.LLM().generate(["x"])
    assert _timer_lines(out) == ["decode"]


def test_the_lines_come_back_through_a_variants_log(engine_dir: Path, tmp_path: Path) -> None:
    """A real child process, as grpo_step.py starts a variant: timers installed, the module
    imported and called, every line prefixed by write_timed, the parts read back."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).resolve().parents[1])!r}, {str(engine_dir)!r}]
        from benchmarks.rollout_timers import install
        install({TARGETS!r})
        import fake_engine
        for _ in range(4):
            fake_engine.load_lora(None, "lora")
            fake_engine.LLM().generate(["p"] * 8)
        """
    )
    log = io.StringIO()
    assert write_timed([sys.executable, "-c", script], {}, tmp_path, log) == 0
    parts = rollout_parts(log.getvalue(), rollouts=4)
    assert parts is not None and set(parts.steady) == set(parts.first) == {"adapter", "decode"}
    assert all(0 <= seconds < 5 for seconds in [*parts.steady.values(), *parts.first.values()])


def test_each_part_is_its_first_call_and_the_median_of_the_steady_rollouts() -> None:
    log = "\n".join(
        f"{10 + i:8.1f}s  rollout-timer {name} {seconds}"
        for i, (name, seconds) in enumerate(
            [("fold", 15.8), ("decode", 1.6)]  # the first rollout: Triton JIT, compile
            + [("fold", 0.18), ("decode", 0.70)] * 2
            + [("fold", 0.20), ("decode", 0.74)]
            + [("decode", 0.07), ("decode", 0.35)]  # the after-training samples
        )
    )
    parts = rollout_parts(log, rollouts=4)
    assert parts is not None
    assert parts.first == {"fold": 15.8, "decode": 1.6}
    assert parts.steady == {"fold": pytest.approx(0.18), "decode": pytest.approx(0.70)}
    assert rollout_parts("  1.0s  INFO no timers in this log", rollouts=4) is None


def test_the_rollout_tables_have_a_row_per_timed_variant() -> None:
    rows = [
        {
            "variant": "unsloth-vllm:16bit",
            "rollout_seconds": {"adapter": 0.017, "fold": 0.185, "decode": 0.721, "restore": 0.108},
            "first_rollout_seconds": {"adapter": 4.9, "fold": 15.8, "decode": 1.6, "restore": 8.2},
            "phase_seconds": {"generate": 1.089},
            "first_step_s": 61.0,
        },
        {"variant": "trl", "rollout_seconds": None, "first_rollout_seconds": None},
        {
            "variant": "trl-vllm:16bit",
            "rollout_seconds": {"decode": 0.650},
            "first_rollout_seconds": {"decode": 1.2},
        },
        {"variant": "unsloth", "error": "exit 1"},
    ]
    assert render_rollouts(rows).splitlines()[2:] == [
        "| variant | adapter | fold | decode | restore | sum | generate phase |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| unsloth-vllm:16bit | 0.017 | 0.185 | 0.721 | 0.108 | 1.031 | 1.089 |",
        "| trl-vllm:16bit | - | - | 0.650 | - | 0.650 | - |",
    ]
    assert render_first_rollouts(rows).splitlines()[2:] == [
        "| variant | adapter | fold | decode | restore | sum | first step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| unsloth-vllm:16bit | 4.900 | 15.800 | 1.600 | 8.200 | 30.500 | 61.000 |",
        "| trl-vllm:16bit | - | - | 1.200 | - | 1.200 | - |",
    ]
