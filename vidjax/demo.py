"""`python -m vidjax.demo`: the web demo.

The command is `vidjax.commands.demo`; this entry module keeps the name people type."""

from vidjax.commands import demo

if __name__ == "__main__":
    demo.run_command()
