"""adan: the Adan optimizer (Adaptive Nesterov Momentum), exactly as the paper's reference.

>>> import torch, adan
>>> model = torch.nn.Linear(4, 2)
>>> opt = adan.Adan(model.parameters(), lr=1e-3, weight_decay=0.02)
"""

from adan._checkpoint import to_reference_format
from adan.optimizer import Adan, adan, global_clip_coefficient

__version__ = "0.1.0"

__all__ = ["Adan", "adan", "global_clip_coefficient", "to_reference_format", "__version__"]
