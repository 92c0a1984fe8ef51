"""hsd: Hindsight Self-Distillation for LLM reasoners.

`hsd.core` (the method: peers, contexts, plan, tau, losses) imports only torch and the standard library.
`HSDConfig` and `HSDTrainer` (which need TRL) are imported lazily, on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["HSDConfig", "HSDTrainer", "__version__"]


def __getattr__(name: str):
    if name == "HSDConfig":
        from hsd.trainer.config import HSDConfig

        return HSDConfig
    if name == "HSDTrainer":
        from hsd.trainer.trainer import HSDTrainer

        return HSDTrainer
    raise AttributeError(f"module 'hsd' has no attribute {name!r}")
