"""Reproductions of the papers' experiments (training loops and their data), called by the CLI."""
