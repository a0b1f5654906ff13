"""`python -m vidjax.zeroshot`: videos scored against free-text labels, and video embeddings searched by text.

The command is `vidjax.commands.zeroshot`; this entry module keeps the name people type."""

from vidjax.commands import zeroshot

if __name__ == "__main__":
    zeroshot.run_command()
