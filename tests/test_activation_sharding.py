"""Named activation shardings (issue 38, 5b): inside the transformer blocks activations carry logical names
(act_batch, act_length, act_embed, act_heads, act_head_dim, act_mlp) that config.sharding_rules maps to mesh axes
(`vidjax.sharding.constrain`). With the defaults a "tensor" mesh axis gives Megatron-style tensor parallelism: q, k,
v and the attention output split by heads, the MLP hidden axis over "tensor", the residual stream split by batch only.

A tensor-parallel VideoMAE step on 8 simulated devices gives the single-device losses and parameters; the lowered
step holds the constraints the rules name, and changing a rule changes them. Also: `constrain` itself (tuple rules,
dims that do not divide, no mesh), and the log line of a parameter left replicated because it does not divide.
"""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import run_steps, tiny_family_config
from jax.sharding import PartitionSpec as P

from vidjax import sharding, tasks, train
from vidjax.config_lib import ConfigError
from vidjax.data import pipeline
from vidjax.models import layers

# 8 heads of 8 channels (width 64) and an MLP of 256 split 4 ways over "tensor", the batch of 8 over "data".
TENSOR_PARALLEL = dict(width=64, num_heads=8, decoder_width=64, decoder_heads=8, depth=1, decoder_depth=1)
MESH = (2, 1, 4)  # data, fsdp, tensor
WIDTH, HEADS, HEAD_DIM, MLP = 64, 8, 8, 256

# `sdy.sharding_constraint %x <@mesh, [{"data"}, {}, {"tensor"}, {}]> : tensor<8x4x8x8xf32>`
_CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@\w+, \[(.*?)\]> : tensor<([\dx]+)x[a-z]+\d*>")


def tp_config(**rules):
    config = tiny_family_config("videomae", **TENSOR_PARALLEL)
    config.sharding_rules.update(rules)
    return config


def constraints(text):
    """{(shape, ((mesh axes of dim 0), ...))} of the sharding constraints in lowered StableHLO ("?": open)."""
    found = set()
    for dims, shape in _CONSTRAINT.findall(text):
        spec = tuple(tuple(re.findall(r'"(\w+)"', d)) or (("?",) if "?" in d else ()) for d in
                     re.findall(r"\{([^}]*)\}", dims))
        found.add((tuple(int(n) for n in shape.split("x")), spec))
    return found


def lowered_train_step(config):
    """The trainer's jitted step for `config` on all 8 devices, lowered (StableHLO text) for its first batch."""
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = MESH
    mesh = sharding.create_mesh(config.mesh, jax.devices())
    source = pipeline.make_source(config.data, "train")
    setup = train.build(config, len(source), mesh)
    spec = tasks.training_of(config.task).input_spec(config, setup.abstract_model)
    batch = next(iter(pipeline.make_dataset(config, "train", source, spec)))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), setup.abstract_state,
                         setup.state_shardings)
    step = train.make_train_step(config, setup)
    return step.lower(state, sharding.global_batch(batch, sharding.batch_sharding(mesh))).as_text()


def by_kind(found):
    """Constraint specs by activation: qkv heads (b, l, heads, head_dim), MLP hidden (b, l, mlp), residual (b, l, d)."""
    kinds = {"heads": set(), "mlp": set(), "residual": set()}
    for shape, spec in found:
        if len(shape) == 4 and shape[0] == 8 and shape[2:] == (HEADS, HEAD_DIM):
            kinds["heads"].add(spec)
        elif len(shape) == 3 and shape[0] == 8 and shape[2] == MLP:
            kinds["mlp"].add(spec)
        elif len(shape) == 3 and shape[0] == 8 and shape[2] == WIDTH:
            kinds["residual"].add(spec)
    return kinds


@pytest.mark.slow
def test_tensor_parallel_step_matches_single_device():
    single_losses, single = run_steps(tp_config(), jax.devices()[:1], steps=2)
    config = tp_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = MESH
    losses, state = run_steps(config, jax.devices(), steps=2)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    qkv = state["params"]["encoder"]["transformer"]["blocks"][0]["attn"]["qkv"]
    assert {s.data.shape for s in qkv.addressable_shards} == {(WIDTH, 3, HEADS // 4, HEAD_DIM)}  # split by heads
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5),
                 state["params"], single["params"])


def test_block_activations_have_the_named_shardings():
    kinds = by_kind(constraints(lowered_train_step(tp_config())))
    # q, k, v and the attention output: batch over data, heads over tensor.
    assert kinds["heads"] == {(("data",), (), ("tensor",), ())}, kinds["heads"]
    assert kinds["mlp"] == {(("data",), (), ("tensor",))}, kinds["mlp"]  # the MLP hidden axis over tensor
    # The residual stream (block input, after each branch, the branch outputs): split by batch only, the width whole
    # (`layers.shard_batch` between blocks names fsdp too, of size 1 here).
    assert kinds["residual"] and all(spec[0][0] == "data" and "tensor" not in spec[0] and spec[1:] == ((), ())
                                     for spec in kinds["residual"]), kinds["residual"]

    # The rules decide: with act_mlp -> "" the MLP hidden axis stays whole; the heads keep their split.
    kinds = by_kind(constraints(lowered_train_step(tp_config(act_mlp=""))))
    assert kinds["mlp"] == {(("data",), (), ())}, kinds["mlp"]
    assert kinds["heads"] == {(("data",), (), ("tensor",), ())}, kinds["heads"]


def lowered(fn, x, mesh, rules=None):
    def traced(x):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.activation_rules(rules):
            return fn(x)

    return jax.jit(traced).lower(x).as_text()


def test_constrain_rules_tuples_and_dims_that_do_not_divide():
    mesh = sharding.create_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices())
    x = jnp.zeros((8, 6, 4))
    # Default rules: batch over data x fsdp (a tuple rule), heads over tensor.
    names = ("act_batch", "act_length", "act_heads")
    assert constraints(lowered(lambda x: sharding.constrain(x, names), x, mesh)) == {
        ((8, 6, 4), (("data", "fsdp"), (), ("tensor",)))}
    # Config rules: tokens over tensor, and a batch of 6 that 4 ways do not divide is left open.
    rules = dict(sharding.default_rules(), act_batch=("data", "fsdp"), act_length="tensor", act_heads="")
    y = jnp.zeros((6, 8, 4))
    assert constraints(lowered(lambda x: sharding.constrain(x, names), y, mesh, rules)) == {
        ((6, 8, 4), (("?",), ("tensor",), ()))}
    # Outside a mesh context: the identity, no constraint.
    assert "sharding_constraint" not in jax.jit(lambda x: sharding.constrain(x, names)).lower(x).as_text()
    # A tuple rule passes the config check; an unknown or repeated axis does not.
    config = tp_config(act_batch=("data", "fsdp"))
    assert sharding.rules_from_config(config)["act_batch"] == ("data", "fsdp")
    config.sharding_rules.act_batch = ("data", "data")
    with pytest.raises(ConfigError, match="repeated"):
        sharding.rules_from_config(config)


def test_parameter_left_replicated_is_logged(caplog):
    mesh = sharding.create_mesh(dict(data=4, fsdp=1, tensor=2), jax.devices())
    with nnx.use_eager_sharding(False):
        attn = nnx.eval_shape(lambda: layers.Attention(24, 3, rngs=nnx.Rngs(0)))  # 3 heads over tensor=2
    with caplog.at_level(logging.INFO, logger="vidjax.sharding"):
        shardings = sharding.param_shardings(nnx.state(attn), mesh, sharding.default_rules())
    assert shardings["qkv"].spec == P(None, None, None, None)
    messages = [r.getMessage() for r in caplog.records if r.name == "vidjax.sharding"]
    qkv = [m for m in messages if m.startswith("Parameter qkv ")]
    assert len(qkv) == 1, messages
    assert "(24, 3, 3, 8)" in qkv[0] and "'heads'" in qkv[0] and "size 3" in qkv[0] and "tensor of size 2" in qkv[0]
    assert any(m.startswith("Parameter q_bias ") for m in messages)
