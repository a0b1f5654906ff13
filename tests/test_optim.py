"""Optimizer recipe: which parameters decay, the warm-up + cosine schedule, the linear lr scaling rule."""

import jax
import numpy as np
import pytest
from test_train import tiny_config

from vidjax import optim, train


def test_weight_decay_only_on_weight_matrices():
    config = tiny_config()
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(setup.abstract_state["params"]))[0]
    by_name = {}
    for path, decays in flat:
        by_name.setdefault(path[-1].key, set()).add(decays)
    assert by_name.pop("kernel") == by_name.pop("qkv") == by_name.pop("proj") == {True}
    # q/v biases are 2-D (heads, head_dim) and the mask token is a vector: none of them decay.
    assert set(by_name) == {"bias", "scale", "q_bias", "v_bias", "proj_bias", "mask_token"}
    assert all(values == {False} for values in by_name.values())


def test_warmup_cosine_schedule_and_lr_scaling():
    config = tiny_config(batch_size=512)
    config.optimizer.base_lr, config.optimizer.lr_batch_base, config.optimizer.min_lr = 1.5e-4, 256, 1e-5
    assert optim.peak_lr(config) == pytest.approx(3e-4)
    schedule = optim.make_schedule(config, total_steps=100, warmup_steps=10)
    lrs = np.array([schedule(s) for s in range(101)])
    assert lrs[0] == 0 and lrs[5] == pytest.approx(1.5e-4) and lrs[10] == pytest.approx(3e-4)
    assert (np.diff(lrs[:11]) > 0).all() and (np.diff(lrs[10:]) <= 1e-12).all()
    assert lrs[55] == pytest.approx(1e-5 + (3e-4 - 1e-5) / 2, rel=1e-4)  # cosine midpoint
    assert lrs[100] == pytest.approx(1e-5)
