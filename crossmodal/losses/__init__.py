"""Losses: small functions that take tensors and return tensors, reductions explicit (pytorch-metric-learning).

One module per family; import from the module (``from crossmodal.losses.gce import gce_loss``).
"""

from __future__ import annotations
