"""`python -m vidjax.data.pack`: videos packed into ArrayRecord shards.

The command is `vidjax.commands.data_pack`; this entry module keeps the name people type."""

from vidjax.commands import data_pack

if __name__ == "__main__":
    data_pack.run_command()
