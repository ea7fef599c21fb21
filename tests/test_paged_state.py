"""A resumed paged optimizer's state loses bitsandbytes' paged marks before the first step.

bitsandbytes is CUDA-only here, so its marks are set by hand on a real torch optimizer's state,
which then goes through torch.save and torch.load as the Trainer's optimizer.pt does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bootstrap.train.paged_state import PAGED_MARKS, resumed_state_callback, unmark_paged_state


def resumed_optimizer(tmp_path: Path) -> tuple[torch.optim.Optimizer, torch.nn.Parameter]:
    """An AdamW whose state was paged (marked as bitsandbytes' get_paged marks its buffers),
    saved to optimizer.pt and loaded into a new optimizer the way transformers' Trainer does."""
    param = torch.nn.Parameter(torch.ones(8))
    before = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(8)
    before.step()
    for value in before.state[param].values():
        value.is_paged = True
        value.page_deviceid = 0
    torch.save(before.state_dict(), tmp_path / "optimizer.pt")

    resumed = torch.nn.Parameter(param.detach().clone())
    after = torch.optim.AdamW([resumed], lr=0.1)
    after.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    return after, resumed


def test_the_checkpoint_brings_the_marks_back_and_they_are_removed(tmp_path: Path) -> None:
    optimizer, param = resumed_optimizer(tmp_path)
    loaded = list(optimizer.state[param].values())
    assert all(getattr(v, "is_paged", False) for v in loaded)  # torch.save kept the attributes
    expected = [v.clone() for v in loaded]
    assert unmark_paged_state(optimizer) == len(loaded)
    assert not any(hasattr(v, mark) for v in loaded for mark in PAGED_MARKS)
    assert all(
        torch.equal(v, e) for v, e in zip(optimizer.state[param].values(), expected, strict=True)
    )
    assert unmark_paged_state(optimizer) == 0


def test_the_callback_unmarks_through_accelerates_wrapper(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from accelerate import Accelerator
    from transformers import TrainerControl, TrainerState

    optimizer, param = resumed_optimizer(tmp_path)
    control = TrainerControl()
    callback = resumed_state_callback()
    with caplog.at_level("INFO", logger="bootstrap.train.paged_state"):
        returned = callback.on_train_begin(
            None, TrainerState(), control, optimizer=Accelerator(cpu=True).prepare(optimizer)
        )
    assert returned is control
    assert not any(getattr(v, "is_paged", False) for v in optimizer.state[param].values())
    assert "no longer marked paged" in caplog.text
