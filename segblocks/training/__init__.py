"""Training: the config (:mod:`.config`), the training data pipeline (:mod:`.data`), the hybrid
REINFORCE loss (:mod:`.losses`) and the training loop with resume and DDP (:mod:`.trainer`)."""

from .config import TrainConfig, load_config
from .losses import HybridLoss, bootstrapped_cross_entropy
from .trainer import train

__all__ = [
    "TrainConfig",
    "load_config",
    "HybridLoss",
    "bootstrapped_cross_entropy",
    "train",
]
