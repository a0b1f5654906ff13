"""Device mesh from the config, logical-axis rules, and the shardings of parameters, optimizer state and batches."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vidjax.config_lib import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


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
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_to_mesh(logical: P, shape: tuple[int, ...], rules: Mapping[str, str], mesh: Mesh) -> P:
    """Maps a logical PartitionSpec to mesh axes; a dim stays replicated if its axis is taken or does not divide it."""
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical)), strict=True):
        if name and name not in rules:
            raise ConfigError(f"A parameter has logical axis {name!r}, which config.sharding_rules does not map; "
                              f"give it a mesh axis (one of {MESH_AXES}, or '' to replicate) in the config's "
                              f"sharding_rules (defaults: vidjax/config_lib.trainer_config).")
        axis = rules.get(name, "") if name else ""
        if axis and axis not in used and dim % mesh.shape[axis] == 0 and mesh.shape[axis] > 1:
            used.add(axis)
            out.append(axis)
        else:
            out.append(None)
    return P(*out)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Mapping[str, str]) -> dict:
    """NamedShardings (as a pure dict, like the parameters) from the logical names the model's Params declare."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
    shapes = nnx.to_pure_dict(abstract_state)
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, logical_to_mesh(spec, x.shape, rules, mesh)),
                        specs, shapes, is_leaf=lambda x: isinstance(x, P))


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


def rules_from_config(config: ml_collections.ConfigDict) -> dict[str, str]:
    rules = dict(config.sharding_rules)
    bad = {name: axis for name, axis in rules.items() if axis and axis not in MESH_AXES}
    if bad:
        raise ConfigError(f"config.sharding_rules maps {bad} to unknown mesh axes; valid axes: {MESH_AXES}.")
    return rules


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles this process's slice of the batch into global arrays (works on one CPU and on a pod)."""
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}
