"""PNG charts for MLflow and the KFP UI, drawn headless."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def figure(path: str | Path, columns: int = 1, size: tuple[float, float] = (6.4, 3.6)):
    """Yield (figure, axes); on exit lay it out, save it to ``path`` and free it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawing, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield drawing, axes
        drawing.tight_layout()
        drawing.savefig(path, dpi=110)
    finally:
        plt.close(drawing)
