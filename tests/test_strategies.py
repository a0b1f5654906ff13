"""Sharding strategies on 8 simulated devices for every model family: data parallel, fsdp and fsdp + tensor
parallel each give the single-device losses to 1e-5, with the expected per-device parameter shards. The fsdp +
tensor run also rematerialises every block (config.model.remat="full"): remat changes what is stored, not what is
computed (test_memory counts the rematerialised regions).

test_train covers a mixed mesh through the whole trainer (checkpoints, evals) and test_vivit a mixed mesh for each
ViViT model type; these cover each strategy on its own through the jitted step (one block per stack, two steps),
with the expected per-device shards of each family's parameters.
"""

import jax
import numpy as np
import optax
import pytest
from helpers import run_steps, tiny_family_config

# (data, fsdp, tensor) -> expected per-device shard of an MLP-in kernel (32, 128) and of a qkv kernel
# (32, 3, 2 heads, 16): fsdp splits the embed axis, tensor the mlp and heads axes.
STRATEGIES = {
    "dp": ((8, 1, 1), (32, 128), (32, 3, 2, 16)),
    "fsdp": ((1, 8, 1), (4, 128), (4, 3, 2, 16)),
    "fsdp_tensor": ((1, 4, 2), (8, 64), (8, 3, 1, 16)),
}
# VideoMamba has no attention: its mixer's tensors stand in (128 inner channels): the x/z input projection and the
# output projection (embed -> fsdp, inner -> tensor), a branch's A_log (inner, state: the state axis stays whole) and
# its depthwise conv (taps, inner).
MAMBA_MIXER = {
    "dp": {("in_proj", "kernel"): (32, 2, 128), ("out_proj", "kernel"): (128, 32),
           ("forward_branch", "A_log"): (128, 16), ("backward_branch", "conv1d", "kernel"): (4, 128)},
    "fsdp": {("in_proj", "kernel"): (4, 2, 128), ("out_proj", "kernel"): (128, 4),
             ("forward_branch", "A_log"): (128, 16), ("backward_branch", "conv1d", "kernel"): (4, 128)},
    "fsdp_tensor": {("in_proj", "kernel"): (8, 2, 64), ("out_proj", "kernel"): (64, 8),
                    ("forward_branch", "A_log"): (64, 16), ("backward_branch", "conv1d", "kernel"): (4, 64)},
}

BLOCK = {
    "videomae": ("encoder", "transformer", "blocks", 0),
    "timesformer": ("blocks", 0),
    "vivit": ("transformer", "blocks", 0),
    "videomamba": ("layers", 0, "mixer"),
}


def get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def shard_shapes(array):
    return {s.data.shape for s in array.addressable_shards}


@pytest.mark.parametrize("model_name", [name if name == "vivit" else pytest.param(name, marks=pytest.mark.slow)
                                        for name in BLOCK])  # the default tier: one family
def test_strategies_match_single_device(model_name):
    # VideoMamba: the chunked scan, which scan="auto" runs on the accelerators these strategies are for, in chunks of
    # 4 (65 tokens: 17 chunks, the state carried across them): compiling is the test's time, and a shorter chunk's
    # in-chunk scan compiles faster (the test took 30 CPU s rather than 33 with the tiny models' 16).
    overrides = (dict(depth=1, expand=4, scan="chunked", scan_chunk=4) if model_name == "videomamba"
                 else dict(depth=1))
    single, _ = run_steps(tiny_family_config(model_name, **overrides), jax.devices()[:1])
    for name, (mesh, mlp_shard, qkv_shard) in STRATEGIES.items():
        config = tiny_family_config(model_name, **overrides)
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
        config.model.remat = "full" if name == "fsdp_tensor" else "none"
        losses, state = run_steps(config, jax.devices())
        np.testing.assert_allclose(losses, single, rtol=1e-5, err_msg=f"{model_name} {name}")
        block = get(state["params"], BLOCK[model_name])
        mu = get(optax.tree_utils.tree_get(state["opt_state"], "mu"), BLOCK[model_name])
        if model_name == "videomamba":
            checks = MAMBA_MIXER[name]
            assert shard_shapes(state["params"]["norm_f"]["scale"]) == {(32,)}  # norms stay whole
        else:
            checks = {("mlp", "fc1", "kernel"): mlp_shard, ("attn", "qkv"): qkv_shard}
            if model_name == "timesformer":  # the temporal attention is split like the spatial one
                checks[("temporal_attn", "qkv")] = qkv_shard
        for path, shard in checks.items():
            param = get(block, path)
            assert shard_shapes(param) == {shard}, (model_name, name, path)
            assert len(param.sharding.device_set) == 8
            assert get(mu, path).sharding == param.sharding  # Adam moments follow their parameter
