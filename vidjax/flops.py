"""The model FLOPs of a traced program: what model-FLOPs utilisation (MFU) divides by the peak (`vidjax.bench`,
`vidjax.train.aot`)."""

from __future__ import annotations

import math

from jax.extend import core

from vidjax import config_lib


def matmul_flops(closed_jaxpr) -> float:
    """The FLOPs of the matrix products (dot_general, convolutions) a traced program runs, 2 per multiply-add, into
    every called, differentiated and rematerialised sub-program; a scan's body times its length, a conditional's
    costliest branch, a while loop's body once. Elementwise work is not counted, as model-FLOPs utilisation
    counts it (it is a few percent of a transformer's FLOPs)."""
    def sub_jaxprs(eqn):
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, core.ClosedJaxpr):
                    yield item.jaxpr
                elif isinstance(item, core.Jaxpr):
                    yield item

    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                out = eqn.outvars[0].aval.shape
                total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
            elif name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
                per_output = math.prod(rhs[d] for d in spec[1:])
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
            elif name == "cond":
                total += max((count(branch.jaxpr) for branch in eqn.params["branches"]), default=0.0)
            elif name == "scan":
                total += eqn.params["length"] * count(eqn.params["jaxpr"].jaxpr)
            else:
                total += sum(count(sub) for sub in sub_jaxprs(eqn))
        return total

    return count(closed_jaxpr.jaxpr)


def plain_config(config):
    """A copy of a trainer config whose step is in its plainest form, the one model FLOPs are counted on: blocks
    unrolled (a loop's body would count once), one micro-batch on the chips, no rematerialisation (recomputed work is
    not the model's) and attention as plain products (a fused kernel is one opaque call), in the model block and in
    the video models nested in it (a captioner's encoder, SVT's backbone)."""
    plain = config.copy_and_resolve_references()
    plain.model.scan_layers, plain.grad_accum_steps, plain.batch_memory = False, 1, "device"
    for _, block in config_lib.video_blocks(plain.model):
        if block.get("remat"):
            block.remat = "none"
        if "attention_impl" in block:
            block.attention_impl = "xla"
    return plain
