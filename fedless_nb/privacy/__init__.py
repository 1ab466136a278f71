"""Differential privacy: dp_sgd (the client's DP optimizers, imported by the function) and accounting (the
controller's accountant, budgets and reports); secure aggregation belongs here too.

dp_sgd may import only what the function side may; accounting imports dp-accounting lazily, nothing of rounds/.
"""
