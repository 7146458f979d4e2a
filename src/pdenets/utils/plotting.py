"""Figure output shared by every report: headless figures without a global backend, tight layout, parent folders.

The library never calls ``matplotlib.use``: :func:`figure` and :func:`subplots` build
:class:`matplotlib.figure.Figure` objects with their own Agg canvas, which pyplot does not know about, so the
user's backend (interactive or not) and pyplot's list of open figures are left alone (docs/design.md §6).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["figure", "pyplot", "save_figure", "subplots"]

_SUBPLOTS_KEYS = ("sharex", "sharey", "squeeze", "width_ratios", "height_ratios", "subplot_kw", "gridspec_kw")


def figure(**fig_kwargs: Any) -> Any:
    """A headless ``Figure(**fig_kwargs)`` (``figsize``, ``dpi``, ...) drawn by its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**fig_kwargs)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """Like ``matplotlib.pyplot.subplots`` (same arguments) but on a headless :func:`figure`."""
    grid = {k: kwargs.pop(k) for k in _SUBPLOTS_KEYS if k in kwargs}
    fig = figure(**kwargs)
    return fig, fig.subplots(nrows, ncols, **grid)


def pyplot() -> ModuleType:
    """A stand-in for ``matplotlib.pyplot`` in plotting code written against it: this module, whose
    :func:`figure` and :func:`subplots` take pyplot's arguments and need no backend."""
    return sys.modules[__name__]


def save_figure(fig: Any, path: str | Path, dpi: int = 110, **savefig_kwargs: Any) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating parent folders), release it, return the path.

    A figure that pyplot manages (made by the caller with ``plt.figure``) is closed through pyplot; pyplot is
    never imported here otherwise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig_kwargs)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)
    return path
