"""Figure output shared by every report: headless backend, tight layout, parent folders, closing."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path, dpi: int = 110, **savefig_kwargs: Any) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating parent folders), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig_kwargs)
    plt.close(fig)
    return path
