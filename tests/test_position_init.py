"""Position tables: the references' initialisation by default, sin-cos starts on request (model.position_init)."""

import numpy as np
import pytest
from flax import nnx

from vidjax.config_lib import ConfigError
from vidjax.models import layers, timesformer, videomamba, vivit

TABLES = {  # family -> (module, model overrides, [(table, CLS rows)])
    "timesformer": (timesformer, dict(variant="Mu/8"), [("pos_embed", 1), ("time_embed", 0)]),
    "vivit": (vivit, dict(variant="Mu/8x2", model_type="factorised_encoder"),
              [("pos_embed", 1), ("temporal_pos_embed", 1)]),
    "videomamba": (videomamba, dict(variant="Mu/8"), [("pos_embed", 1), ("temporal_pos_embedding", 0)]),
}


def build(family, **overrides):
    module, base, _ = TABLES[family]
    cfg = module.default_config()
    cfg.update(dict(base, width=32, depth=1, num_frames=4, image_size=32, num_classes=3, **overrides))
    if family != "videomamba":
        cfg.num_heads = 2
    with nnx.use_eager_sharding(False):
        return module.Model(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("family", sorted(TABLES))
def test_sincos_start_and_reference_default(family):
    reference, sincos = build(family), build(family, position_init="sincos")
    for name, cls_rows in TABLES[family][2]:
        table = np.asarray(getattr(sincos, name)[...])
        np.testing.assert_array_equal(table[:cls_rows], 0)
        np.testing.assert_array_equal(table[cls_rows:], layers.sincos_table(table.shape[0] - cls_rows, 32))
        ref = np.asarray(getattr(reference, name)[...])
        assert np.abs(ref).max() < 0.1  # N(0, 0.02) or zeros: almost no position signal at the start
        assert isinstance(getattr(sincos, name), nnx.Param)  # still learned
    # Everything else starts the same: the sin-cos start draws no other random numbers.
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(reference)), nnx.to_flat_state(nnx.state(sincos)),
                                 strict=True):
        if path[0] not in dict(TABLES[family][2]):
            np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))


def test_unknown_position_init_is_a_config_error():
    with pytest.raises(ConfigError, match="position_init='learned'; choose one of reference, sincos"):
        build("timesformer", position_init="learned")
