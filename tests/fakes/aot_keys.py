"""Print AOTAutograd cache keys of small graphs that launch a real Triton kernel, as JSON.

Run as `python -m tests.fakes.aot_keys [--stable]` in a fresh process (the side table and the
patch are process-wide).  The graphs are what Dynamo makes of a kernel launch: a
`triton_kernel_wrapper_mutation` node whose kernel and constant arguments are side-table
positions.  `shifted` is the same graph built after another trace added a side-table entry, as
in a process that traced one more region first.  Needs triton (defining a kernel needs no GPU).
"""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl
from torch import fx
from torch._functorch._aot_autograd.autograd_cache import (
    AOTAutogradCacheDetails,
    AOTAutogradCachePickler,
)
from torch._functorch._aot_autograd.schemas import AOTConfig
from torch._guards import TracingContext, tracing
from torch._higher_order_ops.triton_kernel_wrap import (
    kernel_side_table,
    triton_kernel_wrapper_mutation,
)
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from bootstrap.train.compile_keys import stabilise_autograd_cache_keys


@triton.jit
def copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(dst + offsets, tl.load(src + offsets, mask=offsets < n), mask=offsets < n)


def launch(block: int) -> fx.Graph:
    graph = fx.Graph()
    x = graph.placeholder("x")
    out = graph.call_function(torch.empty_like, (x,))
    graph.call_function(
        triton_kernel_wrapper_mutation,
        kwargs={
            "kernel_idx": kernel_side_table.add_kernel(copy_kernel),
            "constant_args_idx": kernel_side_table.add_constant_args({"n": 8, "BLOCK": block}),
            "grid": [(1, 1, 1)],
            "tma_descriptor_metadata": {},
            "kwargs": {"src": x, "dst": out},
        },
    )
    graph.output(out)
    return graph


def nested(block: int) -> fx.GraphModule:
    """The launch inside a submodule, as in an autograd.Function's traced forward."""
    root = torch.nn.Module()
    root.body = fx.GraphModule(torch.nn.Module(), launch(block))
    graph = fx.Graph()
    graph.output(graph.call_module("body", (graph.placeholder("x"),)))
    return fx.GraphModule(root, graph)


def plain() -> fx.GraphModule:
    graph = fx.Graph()
    graph.output(graph.call_function(torch.sin, (graph.placeholder("x"),)))
    return fx.GraphModule(torch.nn.Module(), graph)


def key(gm: fx.GraphModule) -> str:
    config = AOTConfig(
        fw_compiler=None, bw_compiler=None, partition_fn=None, decompositions={},
        num_params_buffers=0, aot_id=0, keep_inference_input_mutations=False,
    )  # fmt: skip
    with tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv()))):
        details = AOTAutogradCacheDetails(gm, [torch.zeros(8)], config, {})
        return AOTAutogradCachePickler(gm).get_hash(details)


def main() -> None:
    if "--stable" in sys.argv:
        stabilise_autograd_cache_keys()
    keys = {"launch": key(fx.GraphModule(torch.nn.Module(), launch(16)))}
    kernel_side_table.add_constant_args({"another": "trace"})
    keys["shifted"] = key(fx.GraphModule(torch.nn.Module(), launch(16)))
    keys["other_constant"] = key(fx.GraphModule(torch.nn.Module(), launch(32)))
    keys["nested"] = key(nested(16))
    kernel_side_table.add_constant_args({"another": "trace"})
    keys["nested_shifted"] = key(nested(16))
    keys["plain"] = key(plain())
    print(json.dumps(keys))


if __name__ == "__main__":
    main()
