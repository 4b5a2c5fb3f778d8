"""ncakit: Noise Contrastive Alignment (NCA), InfoNCA and the DPO family on one loss library.

The core modules import nothing beyond torch (and numpy for summaries)::

    from ncakit.losses import get_loss, LOSSES     # the losses, pure functions of [B, K] log-probs
    from ncakit.logprobs import sequence_logps     # token logits -> sequence log-probs (chunked)
    from ncakit.metrics import preference_metrics  # TRL-named metrics and their K-way analogues
    from ncakit.zoo import ZOO_LOSSES              # SPPO, f-DPO, DPOP, PRO, ASFT, CPL, ... (registered)

The toy track (``ncakit.bandit``, ``ncakit.plots``) adds matplotlib; the scale track
(``ncakit.data``, ``ncakit.tinylm``) imports transformers / datasets / accelerate inside those
modules only, so ``import ncakit`` stays light (a test checks it).
"""

from ncakit import logprobs, losses, metrics, ranking, registry, validation, zoo  # losses + zoo register
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
    "registry",
    "validation",
    "LossOutput",
    "get_loss",
    "loss_spec",
    "seed_everything",
    "__version__",
]
