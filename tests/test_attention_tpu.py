"""The "pallas_tpu" attention compiled for TPU for real (Mosaic, not Pallas's interpreter) on this CPU: libtpu compiles
for a TPU topology without a TPU (`jax.experimental.topologies`). Every family's attention shapes at 16 and 64 frames,
224 px, B/16 heads (12 of 64), forward and forward + backward, in bfloat16 and the models' float32, on one v5e chip
and sharded over four; and ViT-L/16's inference temporaries linear in tokens with it. Nothing runs: compiled only.
That the kernel computes what XLA's attention computes (values and gradients, interpret mode):
tests/test_attention_blockwise.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiered
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

pytest.importorskip("libtpu")

from jax.experimental import topologies  # noqa: E402

from vidjax import platform, sharding, tpu  # noqa: E402
from vidjax.models import ParamKeys, get_model  # noqa: E402
from vidjax.ops import attention  # noqa: E402

# Read by libtpu when it starts (the first topology, `topology`): without the first two it warns that it is not on a
# TPU VM; without the third, another process compiling for TPU on this machine holds libtpu's lock file.

FRAMES = (16, 64)
BATCH = 2

# Each family's attention calls at `frames` frames, 224 px (14 x 14 patches of 16), B/16 (12 heads of 64; VideoMAE-B's
# decoder 6), batch BATCH: (queries (batch, length, heads, head_dim), keys' length) per call, as
# `test_the_families_call_these_shapes` reads them off the models. VideoMamba has no attention.
def family_shapes(frames: int) -> dict[str, list[tuple[tuple[int, int, int, int], int]]]:
    t, b, p = frames, BATCH, 196

    def joint(length, heads=12, batch=b):
        return ((batch, length, heads, 64), length)

    return {
        # Tubelets of 2 frames, no CLS: fine-tuning and inference over every token; pre-training's encoder over the
        # 10% visible (20 of each time index's 196), its decoder (6 heads) over all, or with V2's running-cell decoder
        # mask over the visible and the half decoded.
        "videomae-classification": [joint(t // 2 * p)],
        "videomae-pretrain": [joint(t // 2 * 20), joint(t // 2 * p, 6)],
        "videomae-pretrain-run_cell": [joint(t // 2 * 20), joint(t // 2 * 20 + t // 2 * p // 2, 6)],
        # Per-frame patches and a CLS token: divided attention over each patch's T frames (no CLS, batch x 196) and
        # over each frame's CLS + 196 patches (batch x T); joint over CLS + every token; space-only per frame.
        "timesformer-divided_space_time": [joint(t, batch=b * p), joint(1 + p, batch=b * t)],
        "timesformer-joint_space_time": [joint(1 + t * p)],
        "timesformer-space_only": [joint(1 + p, batch=b * t)],
        # Tubelets of 2 frames: model 1 over CLS + every token; model 2 a spatial encoder per time index (CLS + 196)
        # then a temporal one over CLS + T/2; model 3 within each time index (196) and each position (T/2), no CLS;
        # model 4 the same two with half the heads each.
        "vivit-joint": [joint(1 + t // 2 * p)],
        "vivit-factorised_encoder": [joint(1 + t // 2), joint(1 + p, batch=b * t // 2)],
        "vivit-factorised_self_attention": [joint(t // 2, batch=b * p), joint(p, batch=b * t // 2)],
        "vivit-factorised_dot_product": [joint(t // 2, 6, batch=b * p), joint(p, 6, batch=b * t // 2)],
    }


# The model configs of `family_shapes`' keys.
FAMILY_CONFIGS = {
    "videomae-classification": ("videomae", dict(head="classification")),
    "videomae-pretrain": ("videomae", dict(head="pretrain", decoder_depth=1)),
    "videomae-pretrain-run_cell": ("videomae", dict(head="pretrain", decoder_depth=1, decoder_mask_type="run_cell")),
    "timesformer-divided_space_time": ("timesformer", dict(attention_type="divided_space_time")),
    "timesformer-joint_space_time": ("timesformer", dict(attention_type="joint_space_time")),
    "timesformer-space_only": ("timesformer", dict(attention_type="space_only")),
    "vivit-joint": ("vivit", dict(model_type="joint")),
    "vivit-factorised_encoder": ("vivit", dict(model_type="factorised_encoder", temporal_depth=1)),
    "vivit-factorised_self_attention": ("vivit", dict(model_type="factorised_self_attention")),
    "vivit-factorised_dot_product": ("vivit", dict(model_type="factorised_dot_product")),
}


@functools.cache
def topology(name: str = "v5e:2x2"):
    """libtpu's abstract devices of a TPU slice (compile-only: nothing runs on them)."""
    tpu.quiet_libtpu()  # libtpu's environment on a machine without TPU chips, set before it loads
    return topologies.get_topology_desc(platform="tpu", topology_name=name)


def _abstract(model_name, frames, **overrides):
    """A model's abstract graph and state (shapes only, nothing allocated) at `frames` x 224 px, its config's variant
    (B/16) unless `overrides` say otherwise, "auto" resolved for TPU."""
    module = get_model(model_name)
    config = module.default_config()
    config.update(num_frames=frames, image_size=224, **overrides)
    config = platform.resolve(config, "tpu")
    with nnx.use_eager_sharding(False):
        return nnx.split(nnx.eval_shape(lambda: module.Model(config, rngs=ParamKeys(0))))


def _run(graphdef, state, *inputs, **keywords):
    return nnx.merge(graphdef, state)(*inputs, **keywords)


@pytest.mark.parametrize("frames", tiered(FRAMES))
def test_the_families_call_these_shapes(frames, monkeypatch):
    """`family_shapes` is what the models call: each traced (one block, shapes only) with the attention recorded."""
    calls, plain = [], attention.dot_product_attention

    def record(q, k, v, implementation="xla"):
        calls.append((tuple(q.shape), k.shape[1]))
        return plain(q, k, v, "xla")

    monkeypatch.setattr(attention, "dot_product_attention", record)
    for case, shapes in family_shapes(frames).items():
        model_name, overrides = FAMILY_CONFIGS[case]
        graphdef, state = _abstract(model_name, frames, depth=1, **overrides)
        tokens = frames // 2 * 196
        inputs = [jax.ShapeDtypeStruct((BATCH, frames, 224, 224, 3), jnp.float32)]
        keywords = {}
        if overrides.get("head") == "pretrain":
            inputs.append(jax.ShapeDtypeStruct((BATCH, tokens), jnp.bool_))
            if "decoder_mask_type" in overrides:
                keywords["decoder_mask"] = jax.ShapeDtypeStruct((BATCH, tokens), jnp.bool_)
        calls.clear()
        jax.eval_shape(functools.partial(_run, graphdef), state, *inputs, **keywords)
        assert sorted(set(calls)) == sorted(shapes), case


def _one_chip():
    return jax.make_mesh((1,), ("data",), devices=topology().devices[:1], axis_types=(jax.sharding.AxisType.Auto,))


def _compiled(fn, *shapes, dtype, mesh=None, spec=None):
    """`fn` compiled for TPU on one v5e chip (or `mesh`, operands split by `spec`) for operands of `shapes`, traced
    in `mesh`'s context as the trainer traces its steps."""
    mesh = mesh or _one_chip()
    args = [jax.ShapeDtypeStruct(s, dtype, sharding=NamedSharding(mesh, spec or P())) for s in shapes]
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return jax.jit(fn).trace(*args).lower().compile()


def _kernels(compiled) -> list[str]:
    """The Mosaic kernels a compiled TPU program calls: its tpu_custom_call instructions, by name."""
    return [line.split("=")[0].strip().lstrip("%") for line in compiled.as_text().splitlines()
            if 'custom_call_target="tpu_custom_call"' in line]


def _forward(q, k, v):
    return attention.dot_product_attention(q, k, v, "pallas_tpu")


_grads = jax.grad(lambda q, k, v: jnp.sum(_forward(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))


def _forward_and_grads(q, k, v):
    """Inference's forward and training's forward + backward in one program (one compilation: half the time of two)."""
    return _forward(q, k, v), _grads(q, k, v)


@functools.cache
def _kernels_of_forward_and_grads(q: tuple[int, ...], kv: tuple[int, ...], dtype) -> list[str]:
    """`_kernels` of `_forward_and_grads` compiled for these shapes: a shape two cases share (TimeSformer's spatial
    attention, VideoMAE's visible tokens) compiles once in this process."""
    return _kernels(_compiled(_forward_and_grads, q, kv, kv, dtype=dtype))


# One tiny config per family in the default tier (bfloat16, 16 frames); the other settings and shapes are the slow
# tier's (helpers.tiered).
ONE_PER_FAMILY = ("videomae-classification", "timesformer-joint_space_time", "vivit-factorised_encoder")


@pytest.mark.parametrize("dtype", tiered([jnp.bfloat16, jnp.float32]), ids=["bfloat16", "float32"])
@pytest.mark.parametrize("frames", tiered(FRAMES))
@pytest.mark.parametrize("case", [case if case in ONE_PER_FAMILY else pytest.param(case, marks=pytest.mark.slow)
                                  for case in FAMILY_CONFIGS])
def test_the_kernel_compiles_for_tpu_at_every_family_shape(case, frames, dtype):
    """Mosaic compiles the forward and the forward + backward: four kernels (the forward, the forward keeping its
    row statistics for the backward, then the dK/dV and the dQ kernels), with the blocks `attention.pallas_blocks`
    picks."""
    for (b, length, heads, head_dim), length_kv in family_shapes(frames)[case]:
        q, kv = (b, length, heads, head_dim), (b, length_kv, heads, head_dim)
        kernels = _kernels_of_forward_and_grads(q, kv, dtype)
        (block, _), (block_kv, _) = attention.pallas_blocks(length), attention.pallas_blocks(length_kv)
        assert len(kernels) == 4, kernels
        assert f"flash_mha_bwd_dkv_block_q_major_{block}_block_q_{block}_block_k_major_{block_kv}" in " ".join(kernels)


@pytest.mark.parametrize(("batch", "length", "length_kv"), tiered([(2, 9, 33), (8, 197, 197), (8, 1568, 1568)],
                                                                  unpack=True))
def test_the_kernel_compiles_sharded_over_four_chips(batch, length, length_kv):
    """On v5e:2x2 with the batch over ("data", "fsdp"), and the heads over "tensor", as the trainer's mesh context has
    them: the kernel runs on each chip's share (XLA cannot partition a Mosaic kernel; without the shard_map this
    fails), nothing gathered; a batch the chips do not divide (ViViT-2's temporal attention over 2 clips) whole on
    every chip."""
    for mesh_config, spec in (({"data": -1}, P(sharding.BATCH_AXES)),
                              ({"data": 2, "tensor": 2}, P(sharding.BATCH_AXES, None, "tensor"))):
        mesh = sharding.create_mesh(mesh_config, topology().devices)
        if batch % mesh.shape["data"]:
            spec = P()
        q, kv = (batch, length, 12, 64), (batch, length_kv, 12, 64)
        for fn in (_forward, _grads):
            compiled = _compiled(fn, q, kv, kv, dtype=jnp.bfloat16, mesh=mesh, spec=spec)
            text = compiled.as_text()
            assert _kernels(compiled) and "all-gather" not in text and "all-to-all" not in text, mesh_config
            clips = batch // mesh.shape["data"] if batch % mesh.shape["data"] == 0 else batch
            heads = 12 // mesh.shape["tensor"]
            assert f"bf16[{clips},{heads},{attention.pallas_blocks(length)[1]},64]" in text, (mesh_config, text)


# XLA's TPU flag that lets its memory-space assignment keep temporaries in the core's VMEM (128 MiB on v5e) rather than
# HBM; `memory_analysis()` counts HBM only. Off, the temporaries are all counted: on, ViT-L's below are 33, 116, 393
# and 745 MiB (a fitted exponent of 1.53: the smaller clips' fit in VMEM, at 16 frames one block's wholly, 0 bytes).
ALL_TEMPORARIES_IN_HBM = {"xla_vf_vmem_memory_space_assignment": False}


def vit_l_inference_temp_bytes(frames: int, depth: int = 2) -> int:
    """XLA's temporaries (`memory_analysis().temp_size_in_bytes`, all of them in HBM) of VideoMAE ViT-L/16's
    classification forward for TPU (one v5e chip), `frames` x 224 px, batch 1, bfloat16, attention "pallas_tpu", the
    first `depth` of its 24 blocks (XLA reuses one block's temporaries for the next: at 16 to 128 frames all 24 take
    92, 182, 362 and 806 MiB, 2 MiB more than 2 blocks; compiling 2 takes half the time); compiled only."""
    graphdef, state = _abstract("videomae", frames, variant="L/16", depth=depth, dtype="bfloat16",
                                head="classification", num_classes=400, attention_impl="pallas_tpu")
    mesh = _one_chip()
    replicated = NamedSharding(mesh, P())
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
    video = jax.ShapeDtypeStruct((1, frames, 224, 224, 3), jnp.bfloat16, sharding=replicated)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        lowered = jax.jit(functools.partial(_logits, graphdef)).trace(state, video).lower()
    return lowered.compile(compiler_options=ALL_TEMPORARIES_IN_HBM).memory_analysis().temp_size_in_bytes


def _logits(graphdef, state, video):
    return nnx.merge(graphdef, state)(video)["logits"]


@pytest.mark.slow  # four ViT-L compiles for a TPU
def test_vit_l_inference_temporaries_grow_linearly_in_tokens():
    """16 to 128 frames (1,568 to 12,544 tokens): the fitted exponent of the temporaries against the tokens is at most
    1.1 (measured 1.05: 90, 180, 360 and 804 MiB). XLA's attention: 2.0 (181, 652, 4,890 and 9,752 MiB, all 24
    blocks), the score matrices."""
    frames = np.array([16, 32, 64, 128])
    temps = np.array([vit_l_inference_temp_bytes(int(f)) for f in frames], dtype=np.float64)
    exponent = np.polyfit(np.log(frames // 2 * 196), np.log(temps), 1)[0]
    assert exponent <= 1.1, (exponent, temps / 2**20)
