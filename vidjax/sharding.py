"""Device mesh from the config, logical-axis rules, and the shardings of parameters, optimizer state and batches."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vidjax.config_lib import ConfigError, trainer_config

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

logger = logging.getLogger(__name__)

# A rule maps a logical axis to one mesh axis ("tensor"), several ("data", "fsdp": the dimension is split over their
# product, the first one major) or none ("": replicated).
Rule = str | Sequence[str]


def create_mesh(mesh_cfg: Mapping[str, int], devices: list | None = None) -> Mesh:
    """Mesh over ("data", "fsdp", "tensor") from sizes such as data=-1, fsdp=1, tensor=1 (-1 takes the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(mesh_cfg) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"Unknown mesh axes {sorted(unknown)} in config.mesh; valid axes: {MESH_AXES}.")
    sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if len(free) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ConfigError(f"config.mesh={sizes}: sizes must be positive, with at most one -1 (the rest).")
    if free:
        if len(devices) % fixed:
            raise ConfigError(f"config.mesh={sizes}: {len(devices)} devices do not divide by {fixed}.")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ConfigError(f"config.mesh={sizes} needs {math.prod(sizes.values())} devices, but "
                          f"{len(devices)} are available; set one axis to -1 to take the rest.")
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    slices = len({getattr(device, "slice_index", 0) or 0 for device in devices})
    if slices > 1:  # TPU slices over the data-centre network: only the data axis crosses it
        if sizes["data"] % slices:
            raise ConfigError(f"config.mesh={sizes} over {slices} TPU slices: the data axis crosses the slices' "
                              f"network, so config.mesh.data must be a multiple of {slices} (-1 takes the rest).")
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_hybrid_device_mesh((sizes["data"] // slices, sizes["fsdp"], sizes["tensor"]),
                                                    (slices, 1, 1), devices)
        return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def mesh_axes(rule: Rule | None) -> tuple[str, ...]:
    """A rule's mesh axes: "" or None -> (), "tensor" -> ("tensor",), ("data", "fsdp") -> ("data", "fsdp")."""
    if not rule:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def _split_axes(rule: Rule | None, sizes: Mapping[str, int]) -> tuple[str, ...]:
    """The mesh axes of `rule` that split anything on a mesh of `sizes`: present there, with more than one device."""
    return tuple(axis for axis in mesh_axes(rule) if sizes.get(axis, 1) > 1)


def _spec_entry(axes: tuple[str, ...]) -> str | tuple[str, ...]:
    return axes[0] if len(axes) == 1 else axes


_unsplit_logged: set[tuple] = set()  # (path, shape, logical axis): each parameter left whole is logged once


def logical_to_mesh(logical: P, shape: tuple[int, ...], rules: Mapping[str, Rule], mesh: Mesh,
                    path: str = "") -> P:
    """Maps a logical PartitionSpec to mesh axes; a dim stays replicated if its axis is taken or does not divide it.

    A dim left replicated because its mesh axes do not divide it is logged (a warning, once per parameter `path`,
    a "/"-joined name such as encoder/blocks/0/attn/qkv): that parameter then takes a full copy on every device.
    """
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical)), strict=True):
        if name and name not in rules:
            raise ConfigError(f"A parameter has logical axis {name!r}, which config.sharding_rules does not map; "
                              f"give it a mesh axis (one of {MESH_AXES}, or '' to replicate) in the config's "
                              f"sharding_rules (defaults: vidjax/config_lib.trainer_config).")
        axes = _split_axes(rules.get(name, "") if name else "", mesh.shape)
        ways = math.prod(mesh.shape[axis] for axis in axes)
        if not axes or used & set(axes):
            out.append(None)
        elif dim % ways:
            key = (path, tuple(shape), name)
            if key not in _unsplit_logged:
                _unsplit_logged.add(key)
                logger.warning("Parameter %s of shape %s stays replicated along its %r axis: its size %d does not "
                               "divide over mesh axis %s of size %d (config.sharding_rules[%r]).", path or "?",
                               tuple(shape), name, dim, " x ".join(axes), ways, name)
            out.append(None)
        else:
            used.update(axes)
            out.append(_spec_entry(axes))
    return P(*out)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Mapping[str, Rule]) -> dict:
    """NamedShardings (as a pure dict, like the parameters) from the logical names the model's Params declare."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
    shapes = nnx.to_pure_dict(abstract_state)
    return jax.tree_util.tree_map_with_path(
        lambda path, spec, x: NamedSharding(mesh, logical_to_mesh(
            spec, x.shape, rules, mesh, jax.tree_util.keystr(path, simple=True, separator="/"))),
        specs, shapes, is_leaf=lambda x: isinstance(x, P))


# ---- activations: logical names inside the models, mapped by the same rules at trace time ----
#
# Names of activation axes (config.sharding_rules holds their mesh axes beside the parameters'; defaults in
# vidjax/config_lib.trainer_config):
#   act_batch     the leading (batch) axis of every activation          ("data", "fsdp")
#   act_length    the token axis                                         "" (sequence parallelism: a mesh axis here)
#   act_embed     the model width: the residual stream, block in and out "" (whole on every tensor shard)
#   act_heads     attention heads of q, k, v and the attention output   "tensor"
#   act_head_dim  the channels of one head                               ""
#   act_mlp       the MLP's hidden (expanded) axis                       "tensor"
# With these defaults a tensor axis gives Megatron-style tensor parallelism: q, k, v and the attention output are
# split by heads and the MLP's hidden axis over "tensor", while the residual stream is split by batch only.

_ACTIVATION_RULES: contextvars.ContextVar[Mapping[str, Rule] | None] = contextvars.ContextVar(
    "vidjax_activation_rules", default=None)


@functools.cache
def default_rules() -> dict[str, Rule]:
    """The default config.sharding_rules (vidjax/config_lib.trainer_config)."""
    return dict(trainer_config().sharding_rules)


@contextlib.contextmanager
def activation_rules(rules: Mapping[str, Rule] | None) -> Iterator[None]:
    """`constrain` maps activations' logical axes with `rules` (config.sharding_rules) inside this context;
    None (and outside any such context): the defaults. Entered where a step is traced (train.in_mesh_context)."""
    token = _ACTIVATION_RULES.set(None if rules is None else dict(rules))
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical_names: Sequence[str | None]) -> jax.Array:
    """`x` constrained to the sharding its axes' logical names (one per axis, None: replicated) map to through the
    active rules (`activation_rules`) on the mesh in context (`jax.sharding.use_abstract_mesh`).

    A no-op outside a mesh context or on a one-device mesh. An axis whose mesh axes do not divide it, or are taken
    by an earlier axis, is left unconstrained (XLA's propagation decides it); a name the rules lack takes its
    default rule (a config saved before the name existed).
    """
    spec = activation_spec(x.shape, logical_names)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def activation_spec(shape: Sequence[int], logical_names: Sequence[str | None]) -> P | None:
    """The PartitionSpec `constrain` gives an activation of `shape`: each axis's logical name mapped through the
    active rules on the mesh in context, `P.UNCONSTRAINED` where its mesh axes do not divide it or an earlier axis
    took them; None outside a mesh context or on a one-device mesh."""
    names = tuple(logical_names)
    if len(names) != len(shape):
        raise ValueError(f"constrain: {len(names)} logical names {names} for an array of shape {tuple(shape)}.")
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    rules = _ACTIVATION_RULES.get()
    rules = default_rules() if rules is None else rules
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, names, strict=True):
        if name and name not in rules and name not in default_rules():
            raise ConfigError(f"An activation has logical axis {name!r}, which config.sharding_rules does not map; "
                              f"give it a mesh axis (one of {MESH_AXES}, or '' to replicate).")
        axes = _split_axes((rules[name] if name in rules else default_rules()[name]) if name else "", mesh.shape)
        if not axes:
            spec.append(None)
        elif used & set(axes) or dim % math.prod(mesh.shape[axis] for axis in axes):
            spec.append(P.UNCONSTRAINED)
        else:
            used.update(axes)
            spec.append(_spec_entry(axes))
    return P(*spec)


def token_names(ndim: int, *last: str | None) -> tuple[str | None, ...]:
    """Logical names of a token activation with `ndim` axes: act_batch first, `last` the trailing (feature) axes,
    act_length for the token axes between: token_names(3, "act_embed") == ("act_batch", "act_length", "act_embed")."""
    lead = ("act_batch",) + ("act_length",) * max(ndim - len(last) - 1, 0)
    return (lead + tuple(last))[-ndim:] if ndim else ()


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state, params_shardings, mesh: Mesh):
    """Optimizer-state shardings: moments follow their parameter, everything else (counts) is replicated.

    A parameter an optimizer branch does not own (optax.multi_transform: frozen parameters) has an
    optax.MaskedNode in that branch's moments instead of an array; its sharding is that same MaskedNode, an empty
    node, so the state and its shardings keep one tree structure.
    """
    def moment_sharding(moment, sharding):
        return moment if isinstance(moment, optax.MaskedNode) else sharding

    return optax.tree_map_params(tx, moment_sharding, abstract_opt_state, params_shardings,
                                 transform_non_params=lambda _: replicated(mesh),
                                 is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data and fsdp; other axes replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def host_batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch folded into micro-batches (micro-batch, rows, ...; `train.fold_micro_batches`) in pinned host memory:
    each micro-batch's rows split over data and fsdp, as `batch_sharding` splits a batch on the chips."""
    return NamedSharding(mesh, P(None, BATCH_AXES), memory_kind="pinned_host")


def rules_from_config(config: ml_collections.ConfigDict) -> dict[str, Rule]:
    """config.sharding_rules checked: each logical axis maps to "", a mesh axis or a tuple of distinct mesh axes."""
    rules = {name: axis if isinstance(axis, str) else tuple(axis or ())
             for name, axis in config.sharding_rules.items()}
    bad = {name: axis for name, axis in rules.items()
           if any(a not in MESH_AXES for a in mesh_axes(axis)) or len(set(mesh_axes(axis))) < len(mesh_axes(axis))}
    if bad:
        raise ConfigError(f"config.sharding_rules maps {bad} to unknown or repeated mesh axes; valid axes: "
                          f"{MESH_AXES}.")
    return rules


def global_batch(local_batch, sharding: NamedSharding):
    """Assembles this process's slice of the batch (a dict of host arrays, or any pytree of them: a batch folded for
    host memory, `train.Folded`) into global arrays of the same structure (works on one CPU and on a pod)."""
    return jax.tree.map(lambda value: jax.make_array_from_process_local_data(sharding, np.asarray(value)),
                        local_batch)
