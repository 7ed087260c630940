"""anomaly-vae: anomaly detection for tabular and sensor data with variational autoencoders.

Score direction, everywhere in this package: higher means more anomalous.
"""

from anomaly_vae._version import __version__
from anomaly_vae.config import PipelineConfig
from anomaly_vae.errors import AnomalyVAEError
from anomaly_vae.estimator import AnomalyVAE, ScoreBatch


def load_model(path: str, *, device: str | None = None) -> AnomalyVAE:
    """Load a model directory written by ``AnomalyVAE.save`` (never runs code from it)."""
    return AnomalyVAE.load(path, device=device)


__all__ = [
    "AnomalyVAE",
    "AnomalyVAEError",
    "PipelineConfig",
    "ScoreBatch",
    "__version__",
    "load_model",
]
