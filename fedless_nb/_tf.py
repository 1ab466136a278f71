"""The one place TensorFlow is imported, late and quietly.

Level 3 silences the C++ start-up noise (CUDA factory registration on CPU-only machines);
Python-level errors still raise. Set TF_CPP_MIN_LOG_LEVEL yourself to see more.
"""

from __future__ import annotations

import os
from typing import Any


def tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def keras() -> Any:
    return tensorflow().keras
