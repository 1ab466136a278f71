"""Privacy: dp_sgd (the client's DP optimizers, imported by the function), accounting (the controller's
accountant, budgets and reports), secagg (secure aggregation's cryptography, both sides) and audit
(membership-inference attacks on a trained model).

dp_sgd and secagg may import only what the function side may; accounting imports nothing of rounds/; audit
runs after a run, on the controller's side, and may read the runner's partition.
"""
