"""TPU chips and slices: each generation's facts, the names people give a slice, and the abstract devices that libtpu
compiles for on a machine without a TPU (`vidjax.train.aot`, `python -m vidjax.aot`).

A slice is named three ways, all taken by `slice_of`:
- Cloud's accelerator type, GENERATION-N: `v5p-128`, `v4-32`, `v3-8` count TensorCores (two a chip), `v5litepod-256`
  (also `v5e-256`) and `v6e-64` count chips;
- libtpu's topology, GENERATION:SHAPE: `v5p:4x4x4`, `v5e:16x16`, `v6e:8x8`, `v4:2x2x4`;
- `cpu` or `cpu:N`: this process's CPU devices (the first N), for checking a program where it also runs.
A name of Cloud's gets the shape Cloud gives that many chips (the smallest side doubled, the last of equal sides
first: v5p-128 is 64 chips, 4x4x4; v4-32 is 16 chips, 2x2x4; v5litepod-8 is 2x4).

The figures (`CHIPS`) are per chip, from Google's Cloud TPU pages: peak dense bf16 FLOP/s, HBM and its bandwidth,
inter-chip interconnect bandwidth, and the host vCPUs a slice gives each chip (the hosts feed the input
pipeline); the clock is the peak over the matrix units' width (v6e's is not published: 918 TFLOP/s over four
256 x 256 MXUs). jax shows one device a chip, except on v2/v3, whose two TensorCores are a device each.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

from vidjax import platform
from vidjax.config_lib import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation's chip."""

    generation: str  # libtpu's name, the part before ":" of a topology ("v5p")
    cloud_names: tuple[str, ...]  # Cloud's accelerator-type prefixes ("v5litepod", "v5e")
    device_kind: str  # jax's `Device.device_kind` of one of its devices
    peak_bf16_flops: float  # per chip, dense
    hbm_bytes: int  # per chip
    host_vcpus: float  # host vCPUs per chip on Cloud TPU VMs
    dims: int  # 2 (a torus of chips in a plane) or 3
    cores_per_chip: int  # TensorCores a chip, as Cloud's names of v2-v5p count them
    devices_per_chip: int  # jax devices a chip (megacore chips are one)
    chip_config: str = "default"  # libtpu's chip_config_name for its topologies
    ici_bytes_per_s: float | None = None  # inter-chip interconnect bandwidth of one chip (Google's Gbps / 8)
    hbm_bytes_per_s: float | None = None  # HBM bandwidth of one chip
    # The TensorCore clock, what libtpu's cycle estimates count: the peak over the matrix units' multiply-adds a
    # cycle (v5p: 2 cores x 4 MXUs x 128 x 128 x 2 FLOP x 1.75 GHz = 459 TFLOP/s).
    clock_hz: float | None = None
    # Whether libtpu's static profile (`static_estimates`) covers the chip: its DMA latency model is for v5e, v5p,
    # v6e and later ("only supported on VF/VL/GF/GL"), and it stops the process on v3 and v4.
    static_profile: bool = True

    @property
    def counts_cores(self) -> bool:
        """Whether Cloud's accelerator-type number counts TensorCores (v3, v4, v5p) rather than chips."""
        return self.cores_per_chip > 1


GIB = 2**30
CHIPS: dict[str, Chip] = {chip.generation: chip for chip in (
    Chip("v3", ("v3",), "TPU v3", 123e12, 32 * GIB, 24, 2, 2, 2, hbm_bytes_per_s=900e9, clock_hz=940e6,
         static_profile=False),
    Chip("v4", ("v4",), "TPU v4", 275e12, 32 * GIB, 60, 3, 2, 1, "megacore", 2400e9 / 8, 1200e9, 1050e6,
         static_profile=False),
    Chip("v5e", ("v5litepod", "v5e"), "TPU v5 lite", 197e12, 16 * GIB, 28, 2, 1, 1, "default", 1600e9 / 8, 819e9,
         1500e6),
    Chip("v5p", ("v5p",), "TPU v5", 459e12, 95 * GIB, 52, 3, 2, 1, "megacore", 4800e9 / 8, 2765e9, 1750e6),
    Chip("v6e", ("v6e",), "TPU v6 lite", 918e12, 32 * GIB, 45, 2, 1, 1, "default", 3584e9 / 8, 1640e9, 1750e6),
)}
EXAMPLES = ("v5litepod-1", "v6e-1", "v5litepod-8", "v4-32", "v5p-128", "v5litepod-256", "v6e-64", "v3-8",
            "v5p:4x4x4", "v5e:16x16", "cpu", "cpu:8")


@dataclasses.dataclass(frozen=True)
class Slice:
    """A named slice (or several over the data-centre network), resolved."""

    name: str  # as given
    chip: Chip | None  # None: CPU devices
    shape: tuple[int, ...]  # chips along each side of one slice (CPU: (devices,))
    num_slices: int = 1

    @property
    def topology(self) -> str:
        """libtpu's topology name of one slice ("v5p:4x4x4"), or "cpu:N"."""
        sides = "x".join(map(str, self.shape))
        return f"{self.chip.generation}:{sides}" if self.chip else f"cpu:{sides}"

    @property
    def chips(self) -> int:
        """Chips over every slice (CPU: devices)."""
        return math.prod(self.shape) * self.num_slices

    @property
    def num_devices(self) -> int:
        return self.chips * (self.chip.devices_per_chip if self.chip else 1)

    @property
    def platform(self) -> str:
        return "tpu" if self.chip else "cpu"

    def describe(self) -> str:
        """"v5p-128 (v5p:4x4x4, 64 chips)" and the like."""
        what = f"{self.topology}, {self.chips} chip{'s' * (self.chips != 1)}" if self.chip else \
            f"{self.chips} CPU device{'s' * (self.chips != 1)}"
        slices = f" x {self.num_slices} slices over DCN" if self.num_slices > 1 else ""
        return f"{self.name} ({what}{slices})"


def _cloud_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The shape Cloud gives `chips` chips (a power of two): from 1x1(x1), the smallest side doubled, the last of
    equal sides first (v4/v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8; v5e/v6e: 1x1, 1x2, 2x2, 2x4, 4x4, 4x8)."""
    shape = [1] * (dims if chips >= 8 else 2)  # up to 4 chips a v4/v5p slice is flat: 2x2x1
    while math.prod(shape) < chips:
        smallest = min(shape)
        last = max(i for i, side in enumerate(shape) if side == smallest)
        shape[last] *= 2
    shape += [1] * (dims - len(shape))
    return tuple(shape)


def _unknown(name: str, why: str = "") -> ConfigError:
    generations = ", ".join(f"{chip.generation} ({'/'.join(chip.cloud_names)})" for chip in CHIPS.values())
    return ConfigError(f"Unknown TPU slice {name!r}{': ' + why if why else ''}. Give Cloud's accelerator type "
                       f"(GENERATION-N: N TensorCores for v3/v4/v5p, N chips for v5litepod/v5e/v6e, a power of two), "
                       f"a topology GENERATION:SHAPE, or cpu[:N]; generations: {generations}. Valid names include "
                       f"{', '.join(EXAMPLES)}.")


def slice_of(name: str, num_slices: int = 1) -> Slice:
    """The slice a name gives (see the module docstring); an unknown name is a ConfigError listing valid ones."""
    text = name.strip().lower()
    if num_slices < 1:
        raise ConfigError(f"num_slices={num_slices} must be at least 1.")
    if text == "cpu" or text.startswith("cpu:"):
        import jax

        available = len(jax.devices("cpu"))
        count = int(text[4:]) if text[4:].isdigit() else available if text == "cpu" else -1
        if not 1 <= count <= available or num_slices != 1:
            raise ConfigError(f"{name!r}: this process has {available} CPU device(s) (one slice); cpu:N takes the "
                              f"first N (XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N).")
        return Slice(name, None, (count,))
    match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", text)
    if match:
        chip = CHIPS.get({"v5litepod": "v5e"}.get(match[1], match[1]))
        shape = tuple(int(side) for side in match[2].split("x"))
        if chip is None:
            raise _unknown(name, f"no TPU generation {match[1]!r}")
        if len(shape) != chip.dims or min(shape) < 1:
            raise _unknown(name, f"a {chip.generation} topology has {chip.dims} sides")
        return Slice(name, chip, shape, num_slices)
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if not match:
        raise _unknown(name)
    chip = next((c for c in CHIPS.values() if match[1] in c.cloud_names), None)
    if chip is None:
        raise _unknown(name, f"no TPU generation {match[1]!r}")
    count = int(match[2])
    chips = count // chip.cores_per_chip
    if count % chip.cores_per_chip or chips < 1 or chips & (chips - 1):
        unit = "TensorCores (two a chip)" if chip.counts_cores else "chips"
        raise _unknown(name, f"{match[1]}-N counts {unit}; N must give a power of two of chips")
    return Slice(name, chip, _cloud_shape(chips, chip.dims), num_slices)


def local_slice() -> Slice:
    """The slice this process runs on: its TPU chips as a named slice (generation from the device kind, sides from
    the chips' coordinates), or its CPU devices ("cpu:N") elsewhere. A GPU is a ConfigError: compile for it by
    running the trainer there."""
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    if platform == "cpu":
        return Slice(f"cpu:{len(devices)}", None, (len(devices),))
    chip = next((c for c in CHIPS.values() if c.device_kind == devices[0].device_kind), None)
    if platform != "tpu" or chip is None:
        raise ConfigError(f"This process runs on {len(devices)} {devices[0].device_kind} device(s): vidjax.aot "
                          f"compiles for TPU slices ({', '.join(c.device_kind for c in CHIPS.values())}) and CPUs.")
    coords = [tuple(getattr(d, "coords", (0, 0, 0))) for d in devices]
    shape = tuple(max(c[i] for c in coords) + 1 for i in range(chip.dims))
    slices = len({getattr(d, "slice_index", 0) or 0 for d in devices})
    return Slice(f"{chip.generation}:{'x'.join(map(str, shape))}", chip, shape, slices)


def quiet_without_chips() -> bool:
    """On a machine with libtpu installed (`pip install 'jax[tpu]'`, the test extra) but no TPU chips, jax still
    loads libtpu when it starts its backends, and libtpu prints a dozen lines about TPU worker host names and an
    accelerator type it cannot find before jax goes on with the CPU (or GPU). This gives libtpu those values, so it
    says nothing, and lets several processes load it (its lock file guards chips there are none of). Nothing
    changes on a TPU VM, where libtpu is not installed, or where TPU_WORKER_HOSTNAMES is set. `import vidjax` calls
    it, so that every command, script and notebook has it before jax starts a backend. Returns whether it did
    anything."""
    if (os.environ.get("TPU_WORKER_HOSTNAMES") or importlib.util.find_spec("libtpu") is None
            or platform.tpu_chips()):
        return False
    os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # any valid type: a compiled topology decides
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return True


def quiet_libtpu() -> None:
    """`quiet_without_chips`, and jax's own backend kept on the CPU where there are no chips (`python -m vidjax.aot`
    compiles for TPU topologies there; it runs nothing). Call it before the first `topology_devices` (libtpu reads
    its environment when it loads)."""
    if platform.tpu_chips():
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    quiet_without_chips()


STATIC_PROFILE_FLAG = "--xla_jf_dump_static_llo_profile_to"


def static_estimates() -> bool:
    """Asks libtpu for its static estimate of every instruction it compiles, Mosaic kernels among them (each
    instruction's `bundle_analysis_data` in the compiled program; `vidjax.train.aot.kernel_estimates` reads them).
    libtpu makes them when told to write its static LLO profile, so the flag goes into LIBTPU_INIT_ARGS with a
    temporary directory that is removed when the process exits. It works only before libtpu loads. The profile walks
    through every loop iteration of the program, so it costs time and memory in proportion to the step's work (a
    VideoMamba-S step's kernels at 16 clips a chip would take many minutes and tens of GiB): `vidjax.train.aot
    .profile_kernels` asks for it in a process of its own, on a step of a clip or two per batch shard."""
    args = os.environ.get("LIBTPU_INIT_ARGS", "")
    if STATIC_PROFILE_FLAG in args:
        return True
    import atexit
    import shutil
    import tempfile

    where = tempfile.mkdtemp(prefix="vidjax-static-llo-")  # libtpu writes only into a directory that exists
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    os.environ["LIBTPU_INIT_ARGS"] = f"{args} {STATIC_PROFILE_FLAG}={where}".strip()
    return True


def topology_devices(slice_: Slice) -> list:
    """The devices of `slice_`: abstract TPU devices from libtpu's topology (compile-only: nothing runs on them), in
    slice-major order, or this process's first CPU devices."""
    import jax

    if slice_.chip is None:
        return jax.devices("cpu")[: slice_.chips]
    quiet_libtpu()
    try:
        import libtpu  # noqa: F401 -- only to say what is missing
    except ImportError as err:
        raise ConfigError("Compiling for a TPU needs libtpu, the TPU compiler, matching jax: pip install "
                          "'vidjax[tpu]' (Linux x86-64; it installs jax[tpu] at your jax version).") from err
    from jax.experimental import topologies

    options = {"chip_config_name": slice_.chip.chip_config}
    if slice_.chips // slice_.num_slices < 4:  # smaller than a host's 2x2 of chips
        options["chips_per_host_bounds"] = tuple(slice_.shape) + (1,) * (3 - len(slice_.shape))
    if slice_.num_slices > 1:
        options["num_slices"] = slice_.num_slices
    description = topologies.get_topology_desc(platform="tpu", topology_name=slice_.topology, **options)
    devices = list(description.devices)
    devices.sort(key=lambda d: (getattr(d, "slice_index", 0) or 0, d.id))
    if len(devices) != slice_.num_devices:
        raise ConfigError(f"libtpu gave {len(devices)} devices for {slice_.describe()}, {slice_.num_devices} "
                          f"expected.")
    return devices
