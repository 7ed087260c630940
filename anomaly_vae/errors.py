"""One base exception for the package.

Every error a user can cause is an :class:`AnomalyVAEError` whose message is a single line naming
the file, row, column or parameter, the rule it broke and what to do about it. The CLI prints that
line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class AnomalyVAEError(Exception):
    """Base class for every error raised on purpose by anomaly-vae."""


class ConfigError(AnomalyVAEError, ValueError):
    """A parameter, pipeline file or setting is invalid."""


class NotFoundError(AnomalyVAEError, LookupError):
    """A model, threshold or alert that the request names does not exist."""


class InputFileError(AnomalyVAEError):
    """An input file is missing, empty, not a CSV, or read with the wrong separator."""


class SchemaError(AnomalyVAEError):
    """The input does not match the feature schema (a feature column is missing, say)."""


class InvalidRecordsError(AnomalyVAEError):
    """Some records could not be scored; ``rejects`` holds each one's row and reason."""

    def __init__(self, message: str, rejects: object = None) -> None:
        super().__init__(message)
        self.rejects = rejects


class ModelFileError(AnomalyVAEError):
    """A model directory is missing, corrupt, or of an unknown format version."""


class TrainingError(AnomalyVAEError):
    """Training ended with a model no better than the untrained network (it diverged): no
    model is kept."""


class NotFittedError(AnomalyVAEError, ValueError, AttributeError):
    """The estimator is used before ``fit`` (or ``load``). Also a ValueError and an
    AttributeError, as scikit-learn's own: ``hasattr``, ``dir()`` and tab completion on an
    unfitted estimator read a fitted-only property as absent instead of failing."""


class DatabaseError(AnomalyVAEError):
    """The results database cannot be used: a bad URL, an unreachable server, a refused login,
    or a schema that is not the one this version of anomaly-vae expects."""


class DatabaseURLError(DatabaseError, ConfigError):
    """A database URL is malformed or names a database kind anomaly-vae does not support."""


class DatabaseConnectionError(DatabaseError):
    """The database server cannot be reached, or it refused the connection."""


class SchemaVersionError(DatabaseError):
    """The database schema is behind (or ahead of) this version's migrations."""
