"""Installs kernels/fedless, the "Python 3 (fedless)" kernel spec, with jupyter_client's KernelSpecManager."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import UserError

KERNEL_NAME = "fedless"


def kernel_spec_source() -> Path:
    """kernels/fedless in the clone this package is installed from (`pip install -e .`)."""
    source = Path(__file__).resolve().parents[2] / "kernels" / KERNEL_NAME
    if not (source / "kernel.json").exists():
        raise UserError(f"the kernel spec {source} is missing: install fedless_nb from a clone "
                        "with `pip install -e .`")
    return source


def install_kernel_spec(*, prefix: str | None = None) -> str:
    """Install the spec, running this interpreter, for this user or under `prefix`; returns where it went."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as staging:
        spec_dir = Path(staging) / KERNEL_NAME
        shutil.copytree(kernel_spec_source(), spec_dir)
        spec_file = spec_dir / "kernel.json"
        spec = json.loads(spec_file.read_text())
        spec["argv"][0] = sys.executable
        spec_file.write_text(json.dumps(spec, indent=2) + "\n")
        return KernelSpecManager().install_kernel_spec(str(spec_dir), KERNEL_NAME, user=prefix is None, prefix=prefix)
