"""`python -m vidjax.bench`: the step-time benchmark of `vidjax.bench.step`, whose docstring is the --help text."""

from absl import flags

from vidjax import cli
from vidjax.bench import step

# absl's --help prints the __main__ module's docstring and key flags: the command's, which live in `step`.
__doc__ = step.__doc__
flags.adopt_module_key_flags(step)

if __name__ == "__main__":
    cli.run(step.main)
