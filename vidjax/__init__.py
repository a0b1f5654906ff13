"""vidjax: video models in JAX/Flax NNX, built for accelerator throughput."""

import time as _time

IMPORTED_AT = _time.time()  # where /proc is missing, the start the trainer's "first step reached" is measured from

__version__ = "0.1.0"

# With libtpu installed (the test and tpu extras) on a machine without TPU chips, jax's first backend start would
# print libtpu's dozen lines about TPU worker host names. Given those values here, libtpu says nothing in a command,
# a script or a notebook that imports vidjax before jax starts a backend.
from vidjax import tpu as _tpu  # noqa: E402

_tpu.quiet_without_chips()
