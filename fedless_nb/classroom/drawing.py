"""A drawing pad of 8x8 cells, the digits dataset's format: a student draws and labels their own examples.

Each cell is a toggle button (ink 1.0, blank 0.0, as `datasets.load_digits` scales its pixels);
"Add example" keeps the drawing under the chosen label. `pad.data()` is the (x, y) the student's
function trains on: it stays in this kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SIDE = 8


class DrawingPad:
    """The pad's widget (`widget`) and the examples drawn so far (`examples`, `labels`)."""

    def __init__(self) -> None:
        import ipywidgets as widgets

        layout = widgets.Layout(width="28px", height="28px", padding="0", margin="1px")
        self.cells = [widgets.ToggleButton(value=False, layout=layout, tooltip=f"row {i // SIDE + 1}, column {i % SIDE + 1}")
                      for i in range(SIDE * SIDE)]
        for cell in self.cells:
            cell.observe(self._paint, "value")
            cell.add_class("fedless-cell")
        self.label = widgets.Dropdown(options=list(range(10)), value=0, description="Digit", layout={"width": "140px"})
        self.add = widgets.Button(description="Add example", button_style="primary")
        self.clear = widgets.Button(description="Clear")
        self.count = widgets.HTML(self._summary())
        self.add.on_click(lambda _: self.add_drawing())
        self.clear.on_click(lambda _: self.clear_drawing())
        self.examples: list[np.ndarray] = []
        self.labels: list[int] = []
        grid = widgets.GridBox(self.cells, layout=widgets.Layout(grid_template_columns=f"repeat({SIDE}, 30px)"))
        self.widget = widgets.VBox([widgets.HTML("<b>Draw a digit</b> (click cells), pick its label, add it"),
                                    grid, widgets.HBox([self.label, self.add, self.clear]), self.count])
        self.widget.add_class("fedless-drawing")

    @staticmethod
    def _paint(change: dict[str, Any]) -> None:
        change["owner"].button_style = "info" if change["new"] else ""

    def drawing(self) -> np.ndarray:
        return np.array([1.0 if cell.value else 0.0 for cell in self.cells], dtype=np.float32)

    def add_drawing(self) -> None:
        """Keep the current drawing under the chosen label and clear the pad for the next one."""
        self.examples.append(self.drawing())
        self.labels.append(int(self.label.value))
        self.clear_drawing()
        self.count.value = self._summary()

    def clear_drawing(self) -> None:
        for cell in self.cells:
            cell.value = False

    def _summary(self) -> str:
        labels = getattr(self, "labels", [])
        counts = ", ".join(f"{d}: {labels.count(d)}" for d in sorted(set(labels)))
        return f"{len(labels)} examples drawn" + (f" ({counts})" if counts else "")

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """The drawn examples as the digits dataset holds them: x (n, 64) in [0, 1], y (n,) labels."""
        return (np.stack(self.examples) if self.examples else np.zeros((0, SIDE * SIDE), np.float32),
                np.array(self.labels, dtype=np.int64))

    def __repr__(self) -> str:
        return f"DrawingPad({self._summary()})"
