"""APIS: active pointly-supervised instance segmentation."""

import os

# PyTorch's OpenMP threads spin while waiting by default; on a small shared CPU that makes
# training 5-40x slower under load (measured on a 2-core machine). Set before torch is imported;
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
