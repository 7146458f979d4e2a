"""Analysis tools: numerical checks of the papers' mathematical claims (one module per family)."""
