"""`python -m vidjax.data.bench`: the data-loading benchmark.

The command is `vidjax.commands.data_bench`; this entry module keeps the name people type."""

from vidjax.commands import data_bench

if __name__ == "__main__":
    data_bench.run_command()
