"""Sweeps: one run per point of a grid over config keys, a compact line each, one table and one figure.

`run_sweep(base, {"strategy.name": ["fedavg", "fedprox"], "data.alpha": [0.1, 1.0]})` from Python, or
`%%fedless_sweep` with the grid as YAML in the cell. Every run is an ordinary run in the history; the runs
share the kernel's warm workers (pool.py) when their settings match.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from ..data import check_options_read, options_changed
from ..data.partition import PARTITION_KINDS, partition_options
from ..errors import UserError
from ..experiment import ExperimentConfig
from ..runner import RunResult
from .dashboard import CompactDashboard
from .execution import run_to_end
from .pool import warm_pool
from .record import compare_figure, figure_png
from .tables import tidy_table


class SweepError(UserError):
    """A grid that is not a mapping of config keys to lists of values."""


def grid_points(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    if not isinstance(grid, dict) or not grid:
        raise SweepError("a sweep needs a grid: a mapping of config keys to lists of values, "
                         "for example {'strategy.name': ['fedavg', 'fedprox']}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{key}: give a list of values to sweep, for example {key}: [{values!r}]")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _with_values(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """`base` with each dotted key of `point` set; sections are copied, never shared between runs."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for dotted, value in point.items():
        *path, last = dotted.split(".")
        section = data
        for part in path:
            section[part] = dict(section.get(part) or {})
            section = section[part]
        section[last] = value
    return data


def key_label(key: str) -> str:
    """A dotted key's short name in a run's line and the figure's legend: its last part ("data.alpha": alpha), or
    its section for a `name` ("strategy.name": strategy), which would otherwise read as the run's own name."""
    *sections, last = key.split(".")
    return sections[-1] if last == "name" and sections else last


def point_label(point: dict[str, Any]) -> str:
    """The point's values by their short names, or by their whole keys where two short names are the same."""
    labels = [key_label(key) for key in point]
    if len(set(labels)) < len(labels):
        labels = list(point)
    return " ".join(f"{label}={value}" for label, value in zip(labels, point.values()))


def unread_options(config: ExperimentConfig) -> list[str]:
    """The partition options a run's config sets that its own partition does not read (alpha beside an iid split)."""
    every = {name for kind in PARTITION_KINDS for name in partition_options(kind)}
    reads = set(partition_options(config.data.partition))
    return sorted(name for name in options_changed(config.data) if name in every - reads)


def trained_alike(config: ExperimentConfig) -> str:
    """What a run trains, apart from its name: two points of a grid alike here differ only in options their partition
    does not read, and would train the same run twice."""
    data = config.to_dict()
    data.pop("name", None)
    for name in unread_options(config):
        data["data"].pop(name, None)
    return repr(sorted(data.items()))


@dataclass
class SweepResult:
    """The runs of a sweep, in grid order; shows as a table and a figure of accuracy per round."""

    points: list[dict[str, Any]]
    runs: list[RunResult]

    def frame(self) -> Any:
        """One row per run: the grid's values, the run's id, its status and its final test metrics."""
        import pandas as pd

        rows = [{**point, "run_id": run.run_id, "status": run.status, "rounds": len(run.round_metrics),
                 **{f"final_{name}": value for name, value in (run.round_metrics[-1] if run.round_metrics else {}).items()}}
                for point, run in zip(self.points, self.runs)]
        return tidy_table(pd.DataFrame(rows))

    def figure_png(self, metric: str = "accuracy") -> bytes:
        drawn = {id(run): point for point, run in reversed(list(zip(self.points, self.runs)))}  # a run once: its first point
        series = {point_label(point): [(index + 1, m[metric]) for index, m in enumerate(run.round_metrics) if metric in m]
                  for point, run in zip(self.points, self.runs) if drawn[id(run)] is point}
        return figure_png(compare_figure(series, metric))

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        import base64

        frame, png = self.frame(), base64.b64encode(self.figure_png()).decode()
        image = f'<img src="data:image/png;base64,{png}" alt="test accuracy per round of each run" style="max-width:100%"/>'
        return {"text/html": f'<div class="fedless-sweep">{frame.to_html(index=False)}{image}</div>',
                "text/plain": frame.to_string(index=False), "image/png": png}


def run_sweep(base: ExperimentConfig | dict[str, Any], grid: dict[str, list[Any]], *, model: Any = None,
              show: Callable[..., Any] | None = None) -> SweepResult:
    """Run `base` once per point of `grid` (dotted config keys -> lists of values), one after another.

    Each run is named `<base name>-<values>` in the history; `show` (IPython's display, the default in a
    notebook) gets one compact line per run, rewritten as its rounds finish. Every config is validated
    before the first run starts, so a bad value costs no training.
    """
    if show is None:
        from IPython.display import display as show
    data = base.to_dict() if isinstance(base, ExperimentConfig) else dict(base)
    points = grid_points(grid)
    name = data.get("name", "experiment")
    configs = [ExperimentConfig.from_dict(_with_values(data, {
        **point, "name": "-".join([name, *(str(value) for value in point.values())])})) for point in points]
    swept = {key.removeprefix("data.") for key in grid if key.startswith("data.")}
    check_options_read(swept.union(*(options_changed(config.data) for config in configs)),
                       [config.data.partition for config in configs])
    runs: list[RunResult] = []
    first_alike: dict[str, int] = {}  # trained_alike -> the index of the first point that trains it
    for index, (point, config) in enumerate(zip(points, configs)):
        label = f"[{index + 1}/{len(points)}] {point_label(point)}"
        earlier = first_alike.setdefault(trained_alike(config), index)
        if earlier != index:  # the same run again: said, and the earlier point's run stands for it
            show({"text/plain": f"{label}: the run of [{earlier + 1}/{len(points)}], as partition "
                                f"{config.data.partition} does not read {' or '.join(unread_options(config))}"}, raw=True)
            runs.append(runs[earlier])
            continue
        line = CompactDashboard(show, label=label)
        runs.append(run_to_end(config, model, [line], providers=warm_pool().providers_for(config)))
    return SweepResult(points, runs)
