"""A run planted in a history, stopped after its first round of five, for the tests that resume one (the terminal's
and the notebook's) without training it first."""

from fedless_nb.experiment import ExperimentConfig
from fedless_nb.records.history import History, HistoryWriter
from fedless_nb.rounds.events import RunFinished, RunStarted


def plant_stopped_run(history_path, builder, run_id="planted"):
    """Run `run_id` of 4 clients whose model `builder` builds, stopped after round 1 in the history at `history_path`;
    its store is the folder `store` beside the resume."""
    config = ExperimentConfig.from_dict({"clients": 4, "clients_per_round": 2, "rounds": 5, "store": {"path": "store"},
                                         "model": {"builder": builder}}).to_dict()
    writer = HistoryWriter(History(history_path))
    writer(RunStarted(run_id, run_id, config, 5, 4, [], 100.0))
    writer(RunFinished(run_id, "stopped", 110.0, 1, {}))
    writer.history.close()
