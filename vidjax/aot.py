"""`python -m vidjax.aot`: a recipe's step compiled ahead of time for a TPU slice.

The command is `vidjax.commands.aot`; this entry module keeps the name people type."""

from vidjax.commands import aot

if __name__ == "__main__":
    aot.run_command()
