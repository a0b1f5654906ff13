"""`python -m vidjax.bench`: the step-time benchmark of `vidjax.bench.step`, whose docstring is the --help text."""


from vidjax import cli
from vidjax.bench import step

if __name__ == "__main__":
    cli.run(step.main)
