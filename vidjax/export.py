"""`python -m vidjax.export`: a checkpoint exported for serving or for transformers.

The command is `vidjax.commands.export`; this entry module keeps the name people type."""

from vidjax.commands import export

if __name__ == "__main__":
    export.run_command()
