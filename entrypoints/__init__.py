"""Command-line entry points; MLproject calls these as `python -m entrypoints.<module> ...`."""
