"""``python -m ferry.cli``."""

from ferry.cli import app

if __name__ == "__main__":
    app()
