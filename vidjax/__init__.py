"""vidjax: video models in JAX/Flax NNX, built for accelerator throughput."""

import time as _time

IMPORTED_AT = _time.time()  # where /proc is missing, the start the trainer's "first step reached" is measured from

__version__ = "0.1.0"
