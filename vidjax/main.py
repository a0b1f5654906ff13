"""`python -m vidjax.main`: train on a config.

The command is `vidjax.commands.main`; this entry module keeps the name people type."""

from vidjax.commands import main

if __name__ == "__main__":
    main.run_command()
