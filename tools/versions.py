"""Print the Python and package versions of this environment, one line (CI shows what it tested)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "numpy", "matplotlib", "scikit-learn", "setuptools", "onnx", "onnxscript", "onnxruntime",
            "pytest", "pytest-xdist", "hypothesis", "ruff", "jupytext", "nbclient", "ipykernel")  # requirements*.txt


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {platform.python_version()}; " + ", ".join(found)


if __name__ == "__main__":
    print(versions())
