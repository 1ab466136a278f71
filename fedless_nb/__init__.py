"""fedless_nb: serverless federated learning from Jupyter and the terminal.

Importing the package is cheap on purpose: TensorFlow loads only when a run starts,
so a notebook can `import fedless_nb` (or `%load_ext fedless_nb`) instantly.
"""

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext fedless_nb`: %fedless_train, %fedless_resume, %fedless_stop, %fedless_history and the other
    magics (fedless_nb/notebook/magics.py)."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)
