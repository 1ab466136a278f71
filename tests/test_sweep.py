"""Sweep grids: every combination, in order, each run's config its own; mistakes refused before any run."""

import pytest

from fedless_nb.data import PartitionError, check_options_read
from fedless_nb.notebook.sweep import SweepError, _with_values, grid_points, point_label, run_sweep


def test_grid_points_are_every_combination_first_key_slowest():
    points = grid_points({"strategy.name": ["fedavg", "fedprox"], "data.alpha": [0.1, 1.0]})
    assert points == [{"strategy.name": "fedavg", "data.alpha": 0.1}, {"strategy.name": "fedavg", "data.alpha": 1.0},
                      {"strategy.name": "fedprox", "data.alpha": 0.1}, {"strategy.name": "fedprox", "data.alpha": 1.0}]
    assert point_label(points[1]) == "strategy=fedavg alpha=1.0"


def test_a_point_is_labelled_by_short_names_unless_two_are_the_same():
    """A strategy's name reads as the strategy, not as the run's name (the sweep's --name)."""
    assert point_label({"name": "a", "train.dp.noise_multiplier": 1.1}) == "name=a noise_multiplier=1.1"
    assert point_label({"data.alpha": 0.1, "strategy.options.alpha": 2}) == "data.alpha=0.1 strategy.options.alpha=2"


def test_each_point_gets_its_own_sections():
    base = {"data": {"partition": "dirichlet"}, "rounds": 3}
    first, second = (_with_values(base, {"data.alpha": alpha}) for alpha in (0.1, 1.0))
    assert first["data"] == {"partition": "dirichlet", "alpha": 0.1} and second["data"]["alpha"] == 1.0
    assert base == {"data": {"partition": "dirichlet"}, "rounds": 3}


@pytest.mark.parametrize("grid, message", [
    ({}, "a sweep needs a grid"),
    ({"data.alpha": 0.1}, r"data.alpha: give a list of values to sweep, for example data.alpha: \[0.1\]"),
])
def test_a_bad_grid_is_one_line(grid, message):
    with pytest.raises(SweepError, match=message):
        grid_points(grid)


def test_a_swept_partition_option_needs_a_partition_that_reads_it(tmp_path):
    """Swept over an iid split, alpha would give the same run at every value; options of the grid's partitions pass."""
    with pytest.raises(PartitionError, match=r"^data.alpha: partition iid does not read it, so it would change nothing"):
        run_sweep({"history": str(tmp_path / "h.db")}, {"data.alpha": [0.1, 1.0]}, show=print)
    with pytest.raises(PartitionError, match=r"^data.labels_per_client: partition dirichlet or iid does not read it"):
        run_sweep({"history": str(tmp_path / "h.db"), "data": {"labels_per_client": 3}},
                  {"data.partition": ["iid", "dirichlet"]}, show=print)
    with pytest.raises(PartitionError, match=r"^data.alpha: partition iid does not read it"):  # a swept key counts
        run_sweep({"history": str(tmp_path / "h.db")}, {"data.alpha": [0.5]}, show=print)  # at its default too
    assert not (tmp_path / "h.db").exists()
    check_options_read({"alpha", "labels_per_client"}, ["iid", "dirichlet", "pathological"])  # tutorial 02's sweep


def test_every_point_is_validated_before_any_run(tmp_path):
    with pytest.raises(Exception, match="data.alpha: must be > 0, got 0.0"):
        run_sweep({"history": str(tmp_path / "h.db")}, {"data.alpha": [1.0, 0.0]}, show=print)
    assert not (tmp_path / "h.db").exists()


class Lines:
    """A `show` for run_sweep that keeps each line as it last read (IPython's display with display_id, in text)."""

    def __init__(self):
        self.lines = []

    def __call__(self, bundle, raw=True, display_id=False):
        self.lines.append(bundle["text/plain"])
        index = len(self.lines) - 1

        class Handle:
            def update(handle, bundle, raw=True):
                self.lines[index] = bundle["text/plain"]

        return Handle()


@pytest.mark.slow
def test_points_that_differ_only_in_an_option_their_partition_does_not_read_are_one_run(tmp_path):
    """alpha swept beside an iid split (tutorial 02's grid with `data.alpha: [0.1, 1.0]` added) trained the iid split
    once per alpha, the same run twice, the sweep's rows reading as if alpha had been tried on it. The later point is
    the earlier point's run, said in its line, and trains nothing."""
    base = {"history": str(tmp_path / "h.db"), "store": {"kind": "local", "path": str(tmp_path / "store")},
            "clients": 4, "clients_per_round": 2, "rounds": 1, "train": {"epochs": 1},
            "model": {"builder": "mlp", "options": {"hidden_units": [8]}},
            "providers": [{"kind": "local", "workers": 1}]}
    shown = Lines()
    sweep = run_sweep(base, {"data.partition": ["iid", "dirichlet"], "data.alpha": [0.1, 1.0]}, show=shown)
    first, again, dirichlet_low, dirichlet_high = sweep.runs
    assert again is first and len({run.run_id for run in sweep.runs}) == 3
    assert shown.lines[1] == "[2/4] partition=iid alpha=1.0: the run of [1/4], as partition iid does not read alpha"
    assert [line.split(" (")[0] for line in shown.lines] == ["[1/4] partition=iid alpha=0.1", shown.lines[1].split(" (")[0],
                                                            "[3/4] partition=dirichlet alpha=0.1",
                                                            "[4/4] partition=dirichlet alpha=1.0"]
    assert list(sweep.frame().run_id) == [first.run_id, first.run_id, dirichlet_low.run_id, dirichlet_high.run_id]
    from fedless_nb.records.history import History
    assert len(History(tmp_path / "h.db").runs()) == 3
