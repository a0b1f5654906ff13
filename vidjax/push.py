"""`python -m vidjax.push`: a checkpoint pushed to the Hugging Face Hub.

The command is `vidjax.commands.push`; this entry module keeps the name people type."""

from vidjax.commands import push

if __name__ == "__main__":
    push.run_command()
