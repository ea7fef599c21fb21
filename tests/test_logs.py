"""Secrets are redacted from what we print, without garbling everything else."""

from __future__ import annotations

import pytest

from bootstrap.logs import redact


def test_a_real_token_is_redacted_wherever_it_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    text = "GET /api?token=hf_abcdefghijklmnop failed; Bearer hf_abcdefghijklmnop; xhf_abcdefghijklmnopx"
    assert redact(text) == "GET /api?token=*** failed; Bearer ***; x***x"


def test_a_short_token_is_redacted_only_where_it_stands_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", "x")
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ab1")
    text = "export failed: token=x, key ab1 (not in 'expected' nor 'tab1e')"
    assert redact(text) == "export failed: token=***, key *** (not in 'expected' nor 'tab1e')"


def test_a_library_logger_gets_its_setup_back_after_overlapping_blocks() -> None:
    # fetch runs the model's and the dataset's ModelScope downloads in two threads: their blocks
    # overlap without nesting (the first to start ends first).
    import logging

    from bootstrap.logs import through_our_handlers

    logger = logging.getLogger("tests.a-library-with-its-own-handler")
    own = logging.StreamHandler()
    logger.handlers[:], logger.propagate, logger.level = [own], False, logging.INFO
    model, dataset = through_our_handlers(logger.name), through_our_handlers(logger.name)
    model.__enter__()
    dataset.__enter__()
    assert (logger.handlers, logger.propagate) == ([], True)
    model.__exit__(None, None, None)
    assert (logger.handlers, logger.propagate) == ([], True)  # the dataset's block still runs
    dataset.__exit__(None, None, None)
    assert (logger.handlers, logger.propagate, logger.level) == ([own], False, logging.INFO)


def test_a_wandb_key_is_redacted_like_the_hub_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    text = "wandb: login failed for key 0123456789abcdef0123456789abcdef01234567"
    assert redact(text) == "wandb: login failed for key ***"
