"""`python -m vidjax.extract`: embeddings of videos.

The command is `vidjax.commands.extract`; this entry module keeps the name people type."""

from vidjax.commands import extract

if __name__ == "__main__":
    extract.run_command()
