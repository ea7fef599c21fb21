"""Reward functions by the names a config gives them, the user's own included.

A name is one of three things:
- a built-in reward: "gsm8k.correctness", "notebook.xmlcount", ... (rewards.REWARDS);
- a function in an importable module: "mypkg.rewards:length_penalty";
- a function in a Python file: "path/to/my_rewards.py:format_ok" (made absolute when the config
  is read, so the stage processes find it too).

A user's function takes what TRL's GRPOTrainer passes to every reward: `prompts`,
`completions` (lists, one entry per completion) and each dataset column as a keyword argument
(`answer`, `gold_text`, `question` and the dataset's own columns), and returns one float (or
None, "does not apply") per completion.  `check_rewards` calls each once on a sample row at plan
time, so a typo or a wrong signature fails in seconds, not after the model has loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bootstrap.errors import ConfigError
from bootstrap.task.rewards import REWARDS

RewardFunc = Callable[..., Sequence[float | None]]


def load_reward(name: str) -> RewardFunc:
    """The function `name` stands for (module docstring); ConfigError with the fix if none."""
    if name in REWARDS:
        return REWARDS[name]
    target, sep, attribute = name.rpartition(":")
    if not sep or not target or not attribute:
        close = ", ".join(sorted(REWARDS))
        raise ConfigError(
            f"reward {name!r} is not a built-in one, nor module:function or file.py:function",
            hint=f"built-in rewards: {close}",
        )
    module = _load_file(Path(target), name) if target.endswith(".py") else _import(target, name)
    func = getattr(module, attribute, None)
    if not callable(func):
        raise ConfigError(
            f"reward {name!r}: {target} has no function {attribute!r}",
            hint=f"functions there: {', '.join(_functions(module)) or 'none'}",
        )
    return func


def load_rewards(names: Sequence[str]) -> list[RewardFunc]:
    return [load_reward(name) for name in names]


def _import(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"reward {name!r}: cannot import {module}: {exc}",
            hint="install the package, or put the directory holding it on PYTHONPATH",
        ) from exc


def _load_file(path: Path, name: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"reward {name!r}: no file {path}", hint="check the path")
    module_name = f"grpo_bootstrap_user_rewards_{abs(hash(str(path)))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # TRL pickles nothing, but dataclasses there need it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error in it is theirs to see
        del sys.modules[module_name]
        raise ConfigError(
            f"reward {name!r}: {path} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _functions(module: Any) -> list[str]:
    return sorted(
        n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
    )


def check_rewards(names: Sequence[str], sample: Mapping[str, Any]) -> None:
    """Call every reward once as TRL will, on one completion of `sample` (a dataset row as
    training sees it: prompt, answer, gold_text, question and the dataset's columns).

    Raises ConfigError naming the reward and what went wrong: it cannot be found, its signature
    does not take TRL's arguments, it raised, or it did not return one number per completion.
    """
    completion = [{"role": "assistant", "content": _sample_completion(sample)}]
    columns = {k: [v] for k, v in sample.items() if k != "prompt"}
    kwargs = {"prompts": [sample.get("prompt")], "completions": [completion], **columns}
    for name, func in zip(names, load_rewards(names), strict=True):
        try:
            inspect.signature(func).bind(**kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"reward {name!r} cannot take TRL's arguments ({', '.join(kwargs)}): {exc}",
                hint="give it the signature (prompts, completions, **kwargs); a dataset column "
                "it needs comes as a keyword argument of that name",
            ) from None
        except ValueError:  # no signature to read (a builtin): calling it will tell
            pass
        try:
            scores = func(**kwargs)
        except Exception as exc:  # the user's function: whatever it raises is the finding
            raise ConfigError(
                f"reward {name!r} failed on a sample row: {type(exc).__name__}: {exc}",
                hint=f"the row's columns were {', '.join(sorted(columns))}",
            ) from exc
        if (
            not isinstance(scores, Sequence)
            or len(scores) != 1
            or not all(s is None or isinstance(s, (int, float)) for s in scores)
        ):
            raise ConfigError(
                f"reward {name!r} returned {scores!r} for one completion",
                hint="return a list with one float (or None) per completion",
            )


def _sample_completion(sample: Mapping[str, Any]) -> str:
    """A completion in the recipe's layout that answers the sample right."""
    answer = sample.get("gold_text") or sample.get("answer") or ""
    return f"<reasoning>\nA worked answer.\n</reasoning>\n<answer>\n{answer}\n</answer>\n"
