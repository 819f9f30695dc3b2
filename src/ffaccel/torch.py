"""``ffaccel.torch``: PyTorch models run unchanged with their GEMMs on an ffaccel device.

Importing this module imports PyTorch; ``import ffaccel`` alone never does (the attribute
``ffaccel.torch`` loads this module on first use).

Examples
--------
>>> import torch, ffaccel
>>> with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
...     y = torch.nn.Linear(4, 2)(torch.ones(3, 4))
>>> session.stats["offloaded_calls"]
1
"""

import importlib.util

if importlib.util.find_spec("torch") is None:  # say what to install, not where deep inside the import failed
    raise ModuleNotFoundError("ffaccel.torch needs PyTorch, which is not installed: pip install 'ffaccel[torch]' "
                              "(docs/pytorch.md)", name="torch")

from .frontends.torch_offload import OffloadSession, offload, to_numpy, to_torch  # noqa: E402

__all__ = ["OffloadSession", "offload", "to_numpy", "to_torch"]
