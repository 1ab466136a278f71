"""The label-distribution figure of a partition: clients x classes as a heatmap, client sizes beside it.

Drawn on a bare matplotlib Figure (no pyplot state), so it works in a notebook, a thread or a static
report alike; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_TICKS = 30  # more clients or classes than this: let matplotlib thin the tick labels


def label_distribution_figure(counts: Any, *, shares: bool = False, title: str = "") -> Any:
    """A matplotlib Figure of `counts` (clients x classes): each client's examples per class, or with
    `shares` its label shares (rows add up to 1), next to a bar of its size."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    counts = np.asarray(counts)
    sizes = counts.sum(axis=1)
    values = counts / np.maximum(sizes, 1)[:, None] if shares else counts
    num_clients, num_classes = counts.shape
    figure = Figure(figsize=(7.5, min(12.0, 1.6 + 0.22 * num_clients)), layout="constrained")
    heat, bars = figure.subplots(1, 2, sharey=True, width_ratios=[3, 1])
    image = heat.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest",
                        vmin=0, vmax=1 if shares else None)
    figure.colorbar(image, ax=heat, label="share of the client's examples" if shares else "examples", pad=0.01)
    heat.set_xlabel("class")
    heat.set_ylabel("client")
    for axis, count in ((heat.xaxis, num_classes), (heat.yaxis, num_clients)):
        if count <= MAX_TICKS:
            axis.set_ticks(range(count))
        else:
            axis.set_major_locator(MaxNLocator(integer=True))
    bars.barh(range(num_clients), sizes, color="tab:gray")  # shares the heatmap's y axis: client 0 on top
    bars.set_xlabel("examples")
    bars.set_title("size", fontsize="medium")
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


def figure_png(figure: Any, dpi: int = 80) -> bytes:
    """The figure as PNG bytes: what a notebook shows and saves as a static image."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
