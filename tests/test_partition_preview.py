"""A look at a partition before training: preview_partition, its figure and %fedless_partition."""

from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError
from matplotlib.figure import Figure
from test_magics import config_for, shell  # noqa: F401  (the magics' real InteractiveShell fixture)

from fedless_nb.data import (
    PartitionError,
    PartitionPreview,
    label_skew,
    load_dataset,
    partition_dataset,
    preview_config,
    preview_partition,
)
from fedless_nb.data.partition_view import label_distribution_figure
from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.runner import client_ids, write_client_data
from fedless_nb.store import decode_arrays, make_store


def test_preview_counts_are_the_partition_the_settings_give():
    preview = preview_partition("digits", "dirichlet", clients=12, seed=3, alpha=0.2)
    digits = load_dataset("digits")
    parts = partition_dataset(digits, "dirichlet", 12, 3, alpha=0.2, min_examples=2)
    expected = np.stack([np.bincount(digits.y_train[part], minlength=10) for part in parts])
    np.testing.assert_array_equal(preview.counts, expected)
    np.testing.assert_array_equal(preview.sizes, [len(part) for part in parts])
    assert preview.label_skew == label_skew(digits.y_train, parts, 10)
    assert preview.options == {"alpha": 0.2, "min_examples": 2}
    assert "digits: dirichlet(alpha=0.2, min_examples=2), 12 clients, seed 3 - label skew" in repr(preview)


def test_preview_of_a_config_is_what_its_run_writes(tmp_path):
    config = ExperimentConfig.from_dict({"clients": 8, "clients_per_round": 2, "seed": 5,
                                         "store": {"path": str(tmp_path / "store")},
                                         "data": {"dataset": "digits", "partition": "inner_dirichlet", "alpha": 0.3,
                                                  "sizes": [1, 1, 2, 2, 3, 3, 4, 4]}})
    preview = preview_config(config)
    store = make_store(config.store)
    keys = write_client_data(store, load_dataset("digits"), config)
    written = [decode_arrays(store.get(keys[client_id]))[1] for client_id in client_ids(8)]
    np.testing.assert_array_equal(preview.counts, np.stack([np.bincount(y, minlength=10) for y in written]))


def test_preview_writes_nothing_and_refuses_what_a_run_would(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preview_partition("breast_cancer", "lognormal", clients=5, sigma=0.5)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="data.sigma: must be >= 0, got -1.0"):
        preview_partition(partition="lognormal", sigma=-1)
    with pytest.raises(ConfigError, match="data.partition: unknown value 'labels'"):
        preview_partition(partition="labels")
    with pytest.raises(PartitionError, match="'breast_cancer' is not images"):
        preview_partition("breast_cancer", max_rotation=30)


def test_figure_shows_counts_or_shares_beside_the_sizes():
    counts = np.array([[5, 0, 1], [0, 8, 0], [2, 2, 2], [0, 0, 0]])
    figure = label_distribution_figure(counts, title="tiny")
    assert isinstance(figure, Figure) and figure._suptitle.get_text() == "tiny"
    heat, bars, _ = figure.axes  # heatmap, sizes, the heatmap's colorbar
    np.testing.assert_array_equal(heat.images[0].get_array(), counts)
    assert [patch.get_width() for patch in bars.patches] == [6, 8, 6, 0]
    shares = label_distribution_figure(counts, shares=True).axes[0].images[0].get_array()
    np.testing.assert_allclose(shares.sum(axis=1), [1, 1, 1, 0])  # a client without examples has no shares


def test_in_a_notebook_a_preview_shows_as_its_figure():
    preview = preview_partition("digits", "pathological", clients=6, labels_per_client=3)
    assert preview._repr_png_().startswith(b"\x89PNG")
    assert preview.classes_per_client.tolist() == [3] * 6
    frame = preview.frame()
    assert frame.shape == (6, 11) and frame["size"].tolist() == preview.sizes.tolist()


def test_the_magic_previews_with_the_train_options_and_writes_nothing(shell, tmp_path):
    preview = shell.run_line_magic("fedless_partition", "--dataset digits --partition dirichlet --alpha 0.1 --clients 20")
    assert isinstance(preview, PartitionPreview)
    np.testing.assert_array_equal(preview.counts, preview_partition("digits", "dirichlet", 20, 0, alpha=0.1).counts)
    sized = shell.run_line_magic("fedless_partition", "--partition inner_dirichlet --sizes 1,2,3 --clients 3 --seed 4")
    assert sized.sizes.tolist() == [240, 479, 718] and sized.seed == 4
    assert list(tmp_path.iterdir()) == [], "no history, no store"
    for line, message in [("--partition exponential --base 1", "^--base: must be > 1, got 1.0"),
                          ("--partition pathological --labels-per-client 11", "^--labels-per-client: must be between 1"),
                          ("--sizes 1,x", "argument --sizes: write numbers separated by commas, such as 100,200,300; got '1,x'")]:
        with pytest.raises(UsageError, match=message):
            shell.run_line_magic("fedless_partition", line)


def test_train_options_for_the_new_partitions_map_onto_the_schema(shell):
    config = config_for(shell, "--partition power_law --exponent 1.2 --min-examples 5 --max-noise 0.2 "
                               "--labels-per-client 3 --shards-per-client 4 --base 2 --sigma 0.5 --sizes 1,2 --clients 2 "
                               "--clients-per-round 1")
    data = config.data
    assert (data.partition, data.exponent, data.min_examples, data.max_noise) == ("power_law", 1.2, 5, 0.2)
    assert (data.labels_per_client, data.shards_per_client, data.base, data.sigma) == (3, 4, 2.0, 0.5)
    assert data.sizes == [1.0, 2.0]


def test_the_non_iid_tutorial_carries_the_previews_as_static_images():
    import nbformat

    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "tutorials" / "02_non_iid.ipynb", as_version=4)
    previews = [cell for cell in notebook.cells if cell.cell_type == "code" and "%fedless_partition" in cell.source]
    assert len(previews) >= 3
    assert all(any("image/png" in output.get("data", {}) for output in cell.outputs) for cell in previews)


def test_an_option_the_partition_does_not_read_is_one_line_that_names_the_partitions_reading_it(shell, tmp_path):
    """--alpha with the default iid split would train IID data while the student believes it skewed."""
    with pytest.raises(UsageError, match=r"^--min-examples: partition iid does not read it, so it would change "
                                         r"nothing: choose a partition that does \(dirichlet, linear, square, "
                                         r"exponential, power_law, lognormal\), or leave it out$"):
        shell.run_line_magic("fedless_partition", "--min-examples 5 --clients 4")
    for magic in ("fedless_partition", "fedless_train"):
        with pytest.raises(UsageError, match=r"^--alpha: partition iid does not read it"):
            shell.run_line_magic(magic, "--alpha 0.1 --clients 4")
    assert list(tmp_path.iterdir()) == [], "no history, no store"
    assert preview_partition("digits", "dirichlet", clients=4, alpha=0.3, min_examples=5).options["alpha"] == 0.3
