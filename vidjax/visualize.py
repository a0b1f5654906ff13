"""`python -m vidjax.visualize`: reconstruction figures.

The command is `vidjax.commands.visualize`; this entry module keeps the name people type."""

from vidjax.commands import visualize

if __name__ == "__main__":
    visualize.run_command()
