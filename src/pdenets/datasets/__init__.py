"""Data sets: generated and bundled ones (no download) and loaders for local copies of real ones."""
