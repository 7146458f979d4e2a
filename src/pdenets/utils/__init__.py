"""Small shared helpers (model statistics, I/O)."""
