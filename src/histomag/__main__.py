"""``python -m histomag``: the same as the ``histomag`` command."""

from histomag.cli.main import main

if __name__ == "__main__":
    main()
