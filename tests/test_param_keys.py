"""models.ParamKeys draws the keys nnx.Rngs draws, so a model built with it has the same parameters, eagerly and
under jit (where the trainer builds it); start-up time is in docs/performance.md, not here."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_family_config
from test_captioner import tiny as tiny_captioner

from vidjax.models import ParamKeys, captioner, get_model


def _params(build, rngs, jit):
    def make():
        with nnx.use_eager_sharding(False):
            return nnx.to_pure_dict(nnx.state(build(rngs())))
    return jax.jit(make)() if jit else make()


def _builders():
    for name in ("videomae", "timesformer", "vivit", "videomamba"):
        cfg = tiny_family_config(name).model
        yield name, lambda rngs, cfg=cfg, name=name: get_model(name).Model(cfg, rngs=rngs)
    cfg = tiny_captioner("timesformer")
    yield "captioner", lambda rngs, cfg=cfg: captioner.Model(cfg, rngs=rngs)


# Under jit for the ViTs (what the trainer does); eagerly for the rest, whose jitted initialisers take seconds to
# compile on CPU and trace keys no differently.
CASES = [(name, build, name in ("videomae", "timesformer", "vivit")) for name, build in _builders()]
CASES.append(("videomae", CASES[0][1], False))


@pytest.mark.parametrize("name,build,jit", CASES, ids=[f"{n}-{'jit' if j else 'eager'}" for n, _, j in CASES])
def test_a_model_built_with_param_keys_equals_one_built_with_nnx_rngs(name, build, jit):
    seed = 3
    expected = _params(build, lambda: nnx.Rngs(seed), jit)
    got = _params(build, lambda: ParamKeys(seed), jit)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for path, value in jax.tree_util.tree_leaves_with_path(got):
        np.testing.assert_array_equal(value, _at(expected, path), err_msg=jax.tree_util.keystr(path))
    different = _params(build, lambda: ParamKeys(seed + 1), False)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(different), strict=True)
               if np.ndim(a) >= 2)


def _at(tree, path):
    for key in path:
        tree = tree[key.key if hasattr(key, "key") else key.idx]
    return tree


def test_param_keys_counts_its_draws_like_an_rng_stream():
    keys, rngs = ParamKeys(0), nnx.Rngs(0)
    for _ in range(3):
        np.testing.assert_array_equal(jax.random.key_data(keys.params()), jax.random.key_data(rngs.params()))
