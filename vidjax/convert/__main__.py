"""`python -m vidjax.convert`: checkpoints converted from other formats.

The command is `vidjax.commands.convert`; this entry module keeps the name people type."""

from vidjax.commands import convert

if __name__ == "__main__":
    convert.run_command()
