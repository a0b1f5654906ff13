"""`python -m vidjax.evaluate`: a checkpoint's evaluation.

The command is `vidjax.commands.evaluate`; this entry module keeps the name people type."""

from vidjax.commands import evaluate

if __name__ == "__main__":
    evaluate.run_command()
