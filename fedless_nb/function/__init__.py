"""The function side: what a deployed bundle runs (handler.handle: one task in, one result out; serving: status codes).

It may import only wire, security, model, store, _tf, errors and privacy.dp_sgd: never rounds/, records/,
notebook/, deploy/ or a notebook library (a test checks this in a clean interpreter).
"""
