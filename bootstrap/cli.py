"""The `grpo-bootstrap` command line: parse, call the library, render.  Nothing else lives here.

Every option maps to the config field of the same name, so it is also settable as
``GRPO_BOOTSTRAP_<NAME>`` and in the YAML file; `config.load_config` applies the precedence.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from bootstrap import __version__, render
from bootstrap.config import (
    ResolvedConfig,
    env_var,
    load_config,
    parse_set_pairs,
    parse_text,
    recipe_names,
)
from bootstrap.errors import BootstrapError, Interrupted, from_os_error
from bootstrap.launch.signals import Stopped, raise_stopped, stop_signals_to
from bootstrap.logs import redact, setup_logging
from bootstrap.planning.profiles import PROFILES


@dataclass
class App:
    """What the group's options said, passed to every command through click's context."""

    config_file: Path | None
    as_json: bool
    verbosity: int
    flags: dict[str, Any] = field(default_factory=dict)
    command: str = "grpo-bootstrap"  # as typed, for advice such as "run `...` again"

    def config(
        self, defaults: dict[str, Any] | None = None, **command_flags: Any
    ) -> ResolvedConfig:
        """The job config; `defaults` (e.g. the demo's) sit just below this command line."""
        flags = {
            **(defaults or {}),
            **self.flags,
            **{k: v for k, v in command_flags.items() if v is not None},
        }
        return load_config(self.config_file, flags=flags)

    def locked(self, workspace: Path) -> contextlib.AbstractContextManager[None]:
        """The workspace's one-writer lock, held while this command writes to it."""
        from bootstrap.lock import workspace_lock

        return workspace_lock(workspace, self.command)

    @property
    def progress(self) -> bool:
        """Progress bars go to stderr, and not at all with --json or -q."""
        return not self.as_json and self.verbosity >= 0

    def emit(self, document: BaseModel, human: Callable[[], None]) -> None:
        """One JSON document on stdout with --json, else the rich rendering."""
        if self.as_json:
            click.echo(json.dumps(document.model_dump(mode="json"), indent=2))
        else:
            human()


# Exit code of an error that is ours to fix (a bug), not the user's; README's table lists it.
INTERNAL_ERROR = 1


class _Failure(click.ClickException):
    """A library error shown as one clean message (and a JSON document with --json)."""

    def __init__(self, exit_code: int, text: str, as_json: bool) -> None:
        super().__init__(redact(text))
        self.exit_code = exit_code
        self.as_json = as_json

    def show(self, file: Any = None) -> None:
        if self.as_json:
            doc = {"ok": False, "exit_code": self.exit_code, "error": self.message}
            click.echo(json.dumps(doc, indent=2))
        click.echo(f"error: {self.message}", err=True)


def _failure(exc: BaseException, command: str, as_json: bool) -> _Failure:
    if isinstance(exc, BootstrapError):
        return _Failure(exc.exit_code, exc.render(command), as_json)
    mapped = from_os_error(exc) if isinstance(exc, OSError) else None
    if mapped is not None:  # a full disk, an unwritable path: the user's to fix, not a bug
        return _Failure(mapped.exit_code, mapped.render(command), as_json)
    if isinstance(exc, KeyboardInterrupt):
        what = exc.signal_name if isinstance(exc, Stopped) else "SIGINT"
        return _Failure(Interrupted.exit_code, f"{what} received: stopped", as_json)
    logging.getLogger("bootstrap").debug("internal error", exc_info=exc)
    return _Failure(
        INTERNAL_ERROR,
        f"internal error: {type(exc).__name__}: {exc}\n  → this is a bug in grpo-bootstrap; "
        "run it again with -v for the traceback and report it",
        as_json,
    )


class _Group(click.Group):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # A usage error in the global options (a missing --config file, an unknown option)
        # comes before any command; with --json it must still be the one JSON document.
        as_json = "--json" in args
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
            ctx.meta["as_json"] = as_json  # for errors found before the group's callback ran
            return ctx
        except _Failure:
            raise
        except click.ClickException as exc:
            if not as_json:
                raise
            raise _Failure(exc.exit_code, exc.format_message(), as_json=True) from exc

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept for advice such as "run `grpo-bootstrap run --demo` again to resume".
        ctx.meta["command"] = shlex.join(["grpo-bootstrap", *args])
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        # SIGTERM (a cloud's pre-emption, `docker stop`) ends any command as Ctrl-C does;
        # training and `run` install their own handlers, which save first.
        with stop_signals_to(raise_stopped):
            try:
                return super().invoke(ctx)
            except _Failure:
                raise
            except click.ClickException as exc:  # a command's usage error: unknown, bad option
                if not ctx.meta.get("as_json"):
                    raise
                raise _Failure(exc.exit_code, exc.format_message(), as_json=True) from exc
            except (click.exceptions.Exit, click.exceptions.Abort):
                raise
            except (Exception, KeyboardInterrupt) as exc:
                as_json = bool(ctx.meta.get("as_json"))
                raise _failure(exc, ctx.meta.get("command", "grpo-bootstrap"), as_json) from exc


def _opt(
    name: str, *decls: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option bound to config field `name`; its help names the environment variable."""
    kwargs["help"] = f"{kwargs.get('help', '')} [env: {env_var(name)}]".strip()
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), name, default=None, **kwargs)


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by the commands that build a plan; passed on as config flags."""
    options = [
        _opt("region", type=click.Choice(["auto", "cn", "global"]), help="Where the machine is."),
        _opt("mirror", help="auto, huggingface, hf-mirror, modelscope, or an extra mirror's name."),
        _opt("profile", help=f"Training profile ({', '.join(PROFILES)})."),
        _opt("backend", type=click.Choice(["auto", "unsloth", "trl"]), help="Training backend."),
        _opt(
            "recipe",
            metavar="NAME|FILE",
            help=f"A shipped recipe ({', '.join(recipe_names())}) or a recipe .yaml.",
        ),
        _opt("offline", "--offline/--online", help="Use no network at all."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {
            name: kwargs.pop(name)
            for name in ("region", "mirror", "profile", "backend", "recipe", "offline")
        }
        return command(*args, job_flags=flags, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


_LAUNCH_FIELDS = (
    "gpus",
    "distributed",
    "vllm_server",
    "num_machines",
    "machine_rank",
    "main_process_ip",
    "main_process_port",
)


def launch_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where training runs (GPUs, strategy, machines); for the commands that plan a training."""
    options = [
        _opt("gpus", metavar="N|auto", help="GPUs to train on (auto: every visible one)."),
        _opt(
            "distributed",
            type=click.Choice(["ddp", "zero2", "zero3"]),
            help="With several GPUs: DDP, or DeepSpeed ZeRO stage 2 / 3.",
        ),
        _opt(
            "vllm_server",
            "--vllm-server/--no-vllm-server",
            help="TRL's vLLM server on the first GPU; the others train.",
        ),
        _opt("num_machines", type=click.IntRange(min=1), help="Machines in the job."),
        _opt("machine_rank", type=click.IntRange(min=0), help="This machine's rank (0 = main)."),
        _opt("main_process_ip", help="Address of machine 0 (multi-machine jobs)."),
        _opt(
            "main_process_port", type=click.IntRange(1, 65535), help="Rendezvous port on machine 0."
        ),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, job_flags: dict[str, Any], **kwargs: Any) -> Any:
        launch = {name: kwargs.pop(name) for name in _LAUNCH_FIELDS}
        return command(*args, job_flags={**job_flags, **launch}, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where models, data, checkpoints and exports go. [env: {env_var('workspace')}]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="GRPO_BOOTSTRAP_CONFIG",
    help="YAML job config. [env: GRPO_BOOTSTRAP_CONFIG]",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout; logs go to stderr."
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv: libraries too).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any config key, e.g. --set learning_rate=1e-5 (repeatable).",
)
@click.version_option(__version__, prog_name="grpo-bootstrap")
@click.pass_context
def main(
    ctx: click.Context,
    workspace: Path | None,
    config_file: Path | None,
    as_json: bool,
    verbose: int,
    quiet: bool,
    settings: tuple[str, ...],
) -> None:
    """From a rented GPU to a GRPO-trained reasoning model (Qwen2.5-3B-Instruct on GSM8K)."""
    verbosity = -1 if quiet else verbose
    setup_logging(verbosity)
    app = App(config_file=config_file, as_json=as_json, verbosity=verbosity)
    app.command = ctx.meta.get("command", app.command)
    ctx.obj = app
    app.flags = parse_set_pairs(settings)
    if workspace is not None:
        app.flags["workspace"] = workspace


def _detect_and_plan(app: App, job_flags: dict[str, Any], defaults: dict[str, Any] | None = None):
    from bootstrap.detect import detect
    from bootstrap.planning.plan import build_plan

    resolved = app.config(defaults, **job_flags)
    return build_plan(resolved.config, detect(resolved.config), resolved.sources, resolved.recipe)


@main.command()
@job_options
@click.pass_obj
def detect(app: App, job_flags: dict[str, Any]) -> None:
    """Region, GPUs and system, with the evidence for each conclusion."""
    from bootstrap.detect import detect as run_detection

    detection = run_detection(app.config(**job_flags).config)
    app.emit(detection, lambda: render.detection(detection))


@main.command()
@job_options
@launch_options
@click.pass_obj
def plan(app: App, job_flags: dict[str, Any]) -> None:
    """The resolved plan: mirrors, backend, profile, settings. No downloads, no training."""
    the_plan = _detect_and_plan(app, job_flags)
    app.emit(the_plan, lambda: render.plan(the_plan))


@main.command()
@job_options
@click.pass_obj
def fetch(app: App, job_flags: dict[str, Any]) -> None:
    """Model and dataset into the workspace, verified. --offline uses only what is there."""
    from bootstrap.hub.fetch import fetch as fetch_all
    from bootstrap.workspace import Workspace

    the_plan = _detect_and_plan(app, job_flags)
    with app.locked(the_plan.config.workspace):
        manifest = fetch_all(the_plan, Workspace(the_plan.config.workspace), progress=app.progress)
    app.emit(manifest, lambda: render.manifest(manifest, the_plan.config.workspace))


@main.command()
@job_options
@launch_options
@click.pass_obj
def train(app: App, job_flags: dict[str, Any]) -> None:
    """GRPO on the fetched model; resumes from the last checkpoint in the workspace."""
    from bootstrap.train.grpo import train as run_training
    from bootstrap.workspace import Workspace

    the_plan = _detect_and_plan(app, job_flags)
    the_plan.require_training()
    with app.locked(the_plan.config.workspace):
        result = run_training(
            the_plan, Workspace(the_plan.config.workspace), show_progress=app.progress
        )
    app.emit(result, lambda: render.training(result))


@main.command()
@job_options
@launch_options
@click.option(
    "--demo",
    is_flag=True,
    help="Every stage on a CPU with no network: a tiny model and "
    "a GSM8K-shaped set built here, served to fetch by a local hub.",
)
@click.option(
    "--skip-base-eval",
    "skip_base_eval",
    is_flag=True,
    default=None,
    help=f"Don't evaluate the base model first. [env: {env_var('skip_base_eval')}]",
)
@click.option(
    "--verify",
    "rehash",
    is_flag=True,
    help="Re-hash every finished stage's outputs before skipping it (default: sizes, "
    "and contents where a file's time moved).",
)
@click.pass_obj
def run(
    app: App, job_flags: dict[str, Any], demo: bool, skip_base_eval: bool | None, rehash: bool
) -> None:
    """Every stage in order (fetch, eval base, train, eval, export), skipping finished ones."""
    from bootstrap.pipeline import run as run_pipeline
    from bootstrap.workspace import Workspace

    job_flags = {**job_flags, "skip_base_eval": skip_base_eval}
    with contextlib.ExitStack() as stack:
        workspace = Workspace(app.config(**job_flags).config.workspace)
        stack.enter_context(app.locked(workspace.root))  # before the demo builds its assets there
        defaults: dict[str, Any] = {}
        if demo:
            from bootstrap.demo import demo_hub

            defaults = stack.enter_context(demo_hub(workspace))
        the_plan = _detect_and_plan(app, job_flags, defaults)
        the_plan.require_training()
        if not app.as_json:
            render.run_start(the_plan)
        summary = run_pipeline(
            the_plan,
            Workspace(the_plan.config.workspace),
            progress=app.progress,
            verbosity=app.verbosity,
            rehash=rehash,
            on_stage=None if app.as_json else render.stage,
        )
    app.emit(summary, lambda: render.run_summary(summary))


@main.command()
@click.pass_obj
@click.pass_context
def verify(ctx: click.Context, app: App) -> None:
    """Re-hash every output the finished stages recorded; exit 3 if any changed."""
    from bootstrap.pipeline import verify as verify_workspace
    from bootstrap.workspace import Workspace

    workspace = Workspace(app.config().config.workspace)
    with app.locked(workspace.root):
        report = verify_workspace(workspace)
    app.emit(report, lambda: render.verification(report))
    if not report.ok:
        ctx.exit(3)


@main.command("eval")
@job_options
@click.option(
    "--which",
    type=click.Choice(["base", "trained", "both"]),
    default="both",
    show_default=True,
    help="The base model, base + the trained LoRA, or both.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help=f"Evaluate the first N test rows. [env: {env_var('eval_limit')}]",
)
@click.pass_obj
def evaluate_command(app: App, job_flags: dict[str, Any], which: str, limit: int | None) -> None:
    """GSM8K accuracy and format rates, before and/or after training; writes <workspace>/report/."""
    from bootstrap.evaluate import evaluate
    from bootstrap.workspace import Workspace

    the_plan = _detect_and_plan(app, {**job_flags, "eval_limit": limit})
    models = ("base", "trained") if which == "both" else (which,)
    with app.locked(the_plan.config.workspace):
        report = evaluate(
            the_plan, Workspace(the_plan.config.workspace), which=models, show_progress=app.progress
        )
    app.emit(report, lambda: render.evaluation(report))


@main.command("export")
@job_options
@click.option(
    "--formats",
    default=None,
    metavar="LIST",
    help="Comma list of lora, merged16, merged4, gguf-f16, gguf-q8_0, gguf-q4_k_m, "
    f"gguf-q5_k_m, ollama. [env: {env_var('export_formats')}]",
)
@click.option(
    "--push",
    "push",
    multiple=True,
    metavar="HUB:OWNER/NAME",
    help="Upload the exported formats to hf:OWNER/NAME (token: HF_TOKEN) or "
    "modelscope:OWNER/NAME (token: MODELSCOPE_API_TOKEN; created private); repeatable. "
    f"[env: {env_var('push')}]",
)
@click.pass_obj
def export_command(
    app: App, job_flags: dict[str, Any], formats: str | None, push: tuple[str, ...]
) -> None:
    """The trained model in the formats people deploy, listed with sha256 in exports/manifest.json."""
    from bootstrap.export import export
    from bootstrap.workspace import Workspace

    chosen = parse_text("export_formats", formats) if formats is not None else None
    the_plan = _detect_and_plan(
        app, {**job_flags, "export_formats": chosen, "push": list(push) or None}
    )
    with app.locked(the_plan.config.workspace):
        manifest = export(the_plan, Workspace(the_plan.config.workspace))
    app.emit(manifest, lambda: render.exports(manifest))
