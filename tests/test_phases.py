"""A step's time split into disjoint phases, from boundary marks and TRL's profiling contexts."""

from __future__ import annotations

import pytest

from bootstrap.train.phases import PHASES, PhaseClock, split_step, trl_timings


def test_phases_are_disjoint_and_add_up_to_the_step() -> None:
    marks = {"begin": 10.0, "pre_optimizer": 13.0, "optimizer": 13.25, "end": 13.5}
    timed = {
        "_prepare_inputs": 2.0,  # holds generation, weight sync and rewards
        "vLLM.generate": 1.2,
        "sync_weights": 0.3,
        "_calculate_rewards": 0.1,
        "reward_fn": 0.05,  # a reward inside _calculate_rewards: not counted twice
        "compute_loss": 0.4,
    }
    phases = split_step(marks, timed)
    assert list(phases) == list(PHASES)
    expected = {
        "generate": 1.2, "weight_sync": 0.3, "rewards": 0.1, "scoring": 0.4,
        "loss_forward": 0.4, "backward": 0.6, "optimizer": 0.25, "other": 0.25,
    }  # fmt: skip
    assert phases == pytest.approx(expected)
    assert sum(phases.values()) == pytest.approx(3.5)


def test_a_step_without_trl_contexts_or_optimizer_marks_is_backward_and_other() -> None:
    phases = split_step({"begin": 0.0, "end": 2.0}, {})
    assert phases["backward"] == 2.0
    assert sum(phases.values()) == pytest.approx(2.0)


def test_hf_generate_counts_as_generation() -> None:
    phases = split_step(
        {"begin": 0.0, "end": 1.0}, {"transformers.generate": 0.5, "_prepare_inputs": 0.6}
    )
    assert (phases["generate"], phases["scoring"]) == pytest.approx((0.5, 0.1))


def test_the_clock_keeps_the_first_begin_of_accumulated_micro_steps() -> None:
    ticks = iter([1.0, 2.0, 3.0, 4.0, 6.0])
    synced: list[int] = []
    clock = PhaseClock(synchronize=lambda: synced.append(1), timer=lambda: next(ticks))
    clock.add("GRPOTrainer.vLLM.generate", 9.0)  # before any step: no phase
    clock.mark("begin")  # 1.0
    clock.mark("begin")  # a second micro-batch: ignored, takes no tick
    clock.add("UnslothGRPOTrainer.compute_loss", 0.5)  # the class prefix is dropped
    clock.mark("pre_optimizer")  # 2.0
    clock.mark("pre_optimizer")  # 3.0: the last one counts
    clock.mark("optimizer")  # 4.0
    clock.mark("end")  # 6.0
    taken = clock.take()
    assert taken is not None
    seconds, phases = taken
    assert seconds == 5.0  # end 6.0 - the first begin 1.0
    assert (phases["generate"], phases["loss_forward"]) == (0.0, 0.5)
    assert (phases["backward"], phases["optimizer"], phases["other"]) == (1.5, 1.0, 2.0)
    assert len(synced) == 5
    assert clock.take() is None  # a fresh clock: no step marked yet


def test_trl_timings_hears_trls_profiling_contexts_and_puts_the_class_back() -> None:
    from trl.extras.profiling import ProfilingContext

    enter, leave = ProfilingContext.__enter__, ProfilingContext.__exit__
    clock = PhaseClock(synchronize=lambda: None)
    clock.mark("begin")
    with trl_timings(clock) as listening:
        assert listening
        with ProfilingContext(name="GRPOTrainer.vLLM.generate", report_to=[]):
            pass
        with (
            pytest.raises(RuntimeError),
            ProfilingContext(name="GRPOTrainer.sync_weights", report_to=[]),
        ):
            raise RuntimeError("a failing block is still timed and still raises")
    with ProfilingContext(name="GRPOTrainer.vLLM.generate", report_to=[]):
        pass  # after the block: not heard
    assert (ProfilingContext.__enter__, ProfilingContext.__exit__) == (enter, leave)
    clock.mark("end")
    timed = dict(clock._timed)
    assert set(timed) == {"vLLM.generate", "sync_weights"}
    assert all(seconds >= 0 for seconds in timed.values())
