"""`python -m vidjax.probe`: probes fitted on embeddings.

The command is `vidjax.commands.probe`; this entry module keeps the name people type."""

from vidjax.commands import probe

if __name__ == "__main__":
    probe.run_command()
