"""anomaly-vae: anomaly detection for tabular and sensor data with variational autoencoders.

Score direction, everywhere in this package: higher means more anomalous.

The model classes are imported when first used (PEP 562): ``import anomaly_vae`` and the
command line's help, database, threshold and alert commands do not load PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_vae._version import __version__
from anomaly_vae.errors import AnomalyVAEError

if TYPE_CHECKING:
    from anomaly_vae.config import PipelineConfig
    from anomaly_vae.estimator import AnomalyVAE, ScoreBatch

_LAZY = {
    "AnomalyVAE": "anomaly_vae.estimator",
    "ScoreBatch": "anomaly_vae.estimator",
    "PipelineConfig": "anomaly_vae.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anomaly_vae' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def load_model(path: str | Path, *, device: str | None = None) -> AnomalyVAE:
    """Load a model directory written by ``AnomalyVAE.save`` (never runs code from it)."""
    from anomaly_vae.estimator import AnomalyVAE

    return AnomalyVAE.load(path, device=device)


__all__ = [
    "AnomalyVAE",
    "AnomalyVAEError",
    "PipelineConfig",
    "ScoreBatch",
    "__version__",
    "load_model",
]
