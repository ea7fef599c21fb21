"""`export`: the trained model in every format people deploy, listed in exports/manifest.json.

Layout under <workspace>/exports/:
    lora/                 adapter_model.safetensors, adapter_config.json, tokenizer
    merged16/             base + LoRA, 16-bit safetensors, tokenizer
    merged4/              bitsandbytes NF4 (CUDA machines only)
    gguf/<name>-GRPO-<TYPE>.gguf   F16, Q8_0, Q4_K_M, Q5_K_M
    gguf/Modelfile        Ollama, FROM the preferred GGUF in the same directory
    manifest.json         every file of every artefact with size and sha256, and the pushes

The manifest is rewritten after each artefact, so an interrupted export keeps what it finished;
artefacts made from another adapter are dropped from it.  merged16 and the f16 GGUF are also
intermediate steps: when they are not asked for they are built in a scratch directory that is
removed at the end.  With `export.push` set, the chosen artefacts are then uploaded (push.py)
and the commits recorded in the manifest.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bootstrap.caches import workspace_caches
from bootstrap.config import EXPORT_FORMATS
from bootstrap.errors import ConfigError
from bootstrap.model_inputs import adapter_dir, base_model_dir, recipe_system_prompt
from bootstrap.planning.plan import Plan
from bootstrap.workspace import Workspace

from . import gguf, ollama
from .lora import export_lora
from .manifest import ExportManifest, describe, read_manifest, sha256_file, write_manifest
from .merged import export_merged4, export_merged16, require_cuda_bitsandbytes
from .push import check_targets, push

__all__ = ["ExportManifest", "export", "resolve_formats"]

log = logging.getLogger(__name__)


def resolve_formats(requested: Sequence[str]) -> list[str]:
    """Validated formats, in the order they are made (EXPORT_FORMATS order)."""
    unknown = [f for f in requested if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(
            f"unknown export format(s): {', '.join(unknown)}",
            hint=f"choose from {', '.join(EXPORT_FORMATS)}",
        )
    return [f for f in EXPORT_FORMATS if f in requested]


def _check_environment(formats: list[str]) -> None:
    """Refuse before any work when this machine cannot make a requested format."""
    if "merged4" in formats:
        require_cuda_bitsandbytes()
    if any(f.startswith("gguf-") or f == "ollama" for f in formats):  # ollama may need a GGUF made
        gguf.require_tools()


class _Exporter:
    def __init__(self, plan: Plan, workspace: Workspace, formats: list[str], scratch: Path) -> None:
        self.plan = plan
        self.formats = formats
        self.model_id = plan.config.model
        self.base = base_model_dir(plan, workspace)
        self.adapter = adapter_dir(workspace)
        self.exports = workspace.exports
        self.scratch = scratch
        self.system_prompt = recipe_system_prompt(plan)
        self.manifest = read_manifest(
            self.exports, self.model_id, sha256_file(self.adapter / "adapter_model.safetensors")
        )

    def record(self, fmt: str, target: Path, **details: str | float | bool | None) -> None:
        self.manifest.artefacts[fmt] = describe(fmt, target, self.exports, **details)
        write_manifest(self.exports, self.manifest)
        log.info("%s: %s", fmt, target)

    def merged16(self, keep: bool) -> Path:
        """The merged 16-bit directory: exported (and recorded) when `keep`, else scratch."""
        if "merged16" in self.manifest.artefacts:
            return self.exports / self.manifest.artefacts["merged16"].path
        if not keep:
            scratch = self.scratch / "merged16"
            return (
                scratch if scratch.is_dir() else export_merged16(self.adapter, self.base, scratch)
            )
        path = export_merged16(self.adapter, self.base, self.exports / "merged16")
        self.record("merged16", path)
        return path

    def f16_gguf(self, keep: bool) -> Path:
        recorded = self.manifest.artefacts.get("gguf-f16")
        if recorded:
            return self.exports / recorded.path
        if not keep:
            scratch = self.scratch / "f16.gguf"
            return scratch if scratch.is_file() else gguf.convert_f16(self.merged16(False), scratch)
        return self.gguf("f16")

    def gguf(self, kind: str) -> Path:
        dest = self.exports / "gguf" / gguf.gguf_filename(self.model_id, kind)
        merged = self.merged16("merged16" in self.formats)
        if kind == "f16":
            produce = functools.partial(gguf.convert_f16, merged)
        else:
            produce = functools.partial(
                gguf.quantize, self.f16_gguf("gguf-f16" in self.formats), kind=kind
            )
        findings = gguf.build_verified(dest, produce, merged, self.system_prompt)
        self.record(f"gguf-{kind}", dest, quantization=kind.upper(), **findings)
        return dest

    def modelfile(self) -> None:
        """The Modelfile for the preferred GGUF there is; q4_k_m is made when there is none."""
        if not any(f in self.manifest.artefacts for f in ollama.GGUF_PREFERENCE):
            self.gguf("q4_k_m")
        chosen = next(f for f in ollama.GGUF_PREFERENCE if f in self.manifest.artefacts)
        gguf_path = self.exports / self.manifest.artefacts[chosen].path
        train = self.plan.config.train
        text = ollama.modelfile_text(
            gguf_path.name,
            self.base,
            self.system_prompt,
            temperature=train.sample_temperature,
            top_p=train.sample_top_p,
        )
        path = ollama.write_modelfile(gguf_path.parent / "Modelfile", text)
        self.record("ollama", path, gguf=chosen)

    def run(self) -> ExportManifest:
        for fmt in self.formats:
            if fmt == "lora":
                self.record(
                    "lora",
                    export_lora(self.adapter, self.base, self.model_id, self.exports / "lora"),
                )
            elif fmt == "merged16":
                self.manifest.artefacts.pop("merged16", None)  # asked for: made afresh
                self.merged16(True)
            elif fmt == "merged4":
                self.record(
                    "merged4",
                    export_merged4(
                        self.merged16("merged16" in self.formats), self.exports / "merged4"
                    ),
                )
            elif fmt.startswith("gguf-"):
                self.manifest.artefacts.pop(fmt, None)
                self.gguf(fmt.removeprefix("gguf-"))
            elif fmt == "ollama":
                self.modelfile()
        return self.manifest


def _remove_leftovers(exports: Path) -> None:
    """Scratch and half-written files of an export that was killed; never a finished artefact."""
    for leftover in [*exports.glob(".scratch.*"), *exports.rglob(".*.tmp")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def export(
    plan: Plan, workspace: Workspace, formats: Sequence[str] | None = None
) -> ExportManifest:
    """Write the requested formats (default: the plan's) under <workspace>/exports/.

    Raises EnvironmentUnfit before any work when a format cannot be made here (merged4 without
    CUDA, GGUF without the llama.cpp tools, a push without its hub's token) and ConfigError when
    the base model or the adapter is missing.  Returns the manifest, which is also written to
    exports/manifest.json.
    """
    chosen = resolve_formats(list(formats) if formats is not None else plan.export_formats)
    targets = plan.config.export.push
    if targets and plan.config.offline:
        raise ConfigError(
            f"--offline uses no network, so it cannot push to {', '.join(targets)}",
            hint="drop --offline to push, or drop the push targets to export only",
        )
    _check_environment(chosen)
    check_targets(targets)
    workspace.exports.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(workspace.exports)
    scratch = Path(tempfile.mkdtemp(prefix=".scratch.", dir=workspace.exports))
    # The kernels bitsandbytes and torch build for the merges go to the workspace's caches.
    with workspace_caches(workspace.cache):
        try:
            manifest = _Exporter(plan, workspace, chosen, scratch).run()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if targets:
        manifest.pushes = push(
            workspace.exports,
            manifest,
            targets,
            endpoints=plan.config.endpoints,
            formats=chosen,
        )
        write_manifest(workspace.exports, manifest)
    return manifest
