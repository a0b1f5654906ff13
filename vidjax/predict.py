"""`python -m vidjax.predict`: predictions for video files.

The command is `vidjax.commands.predict`; this entry module keeps the name people type."""

from vidjax.commands import predict

if __name__ == "__main__":
    predict.run_command()
