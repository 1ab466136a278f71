"""The controller side of a run: the controller's round interface, its schedules (synchronous, FedBuff, secure
aggregation), where a sum-based round is summed (streaming in the controller, or tree aggregation in aggregator
functions), client selection, retries and quorum, update screening, stragglers, checkpoints, evaluation and
the events observers receive.

It may import the function-side contract (wire, security, store, model), strategies, providers, privacy and the
config's sections (experiment); never records/ or notebook/ (they observe the controller through its events).
"""
