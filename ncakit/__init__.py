"""ncakit: Noise Contrastive Alignment (NCA), InfoNCA and the DPO family on one loss library.

The core (this package's top-level modules) imports nothing beyond torch (and numpy)::

    from ncakit import get_loss, loss_spec          # the registry: every loss by name, with its facts
    from ncakit.losses import nca, infonca, dpo     # the losses, pure functions of [B, K] log-probs
    from ncakit.logprobs import sequence_logps      # token logits -> sequence log-probs (chunked)
    from ncakit.metrics import preference_metrics   # TRL-named metrics and their K-way analogues
    from ncakit.zoo import ZOO_LOSSES               # SPPO, f-DPO, DPOP, PRO, ASFT, CPL, ... (registered)

Two tracks build on it and never import each other: ``ncakit.toy`` (bandits; matplotlib in its
figure modules only) and ``ncakit.scale`` (the accelerate loop; transformers, datasets and
accelerate). ``import ncakit`` loads neither (tests/test_architecture.py checks it).
"""

from ncakit import (  # losses + zoo register
    logprobs,
    losses,
    metrics,
    ranking,
    registry,
    validation,
    variants,
    zoo,
)
from ncakit.losses import LossOutput
from ncakit.registry import get_loss, loss_spec
from ncakit.utils import seed_everything

__version__ = "0.1.0"

__all__ = [
    "losses",
    "logprobs",
    "metrics",
    "ranking",
    "zoo",
    "variants",
    "registry",
    "validation",
    "LossOutput",
    "get_loss",
    "loss_spec",
    "seed_everything",
    "__version__",
]
