"""`python -m vidjax.data.check`: the dataset doctor.

The command is `vidjax.commands.data_check`; this entry module keeps the name people type."""

from vidjax.commands import data_check

if __name__ == "__main__":
    data_check.run_command()
