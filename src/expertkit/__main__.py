"""`python -m expertkit` = `expertkit`."""

from expertkit.cli.main import run_cli

if __name__ == "__main__":
    run_cli()
