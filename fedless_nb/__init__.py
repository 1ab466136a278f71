"""fedless_nb: serverless federated learning from Jupyter and the terminal.

Importing the package is cheap on purpose: TensorFlow loads only when a run starts,
so a notebook can `import fedless_nb` (or `%load_ext fedless_nb`) instantly.
"""

__version__ = "0.1.0"
