"""The exceptions `ctx` methods raise. Every one is a ShakerError."""
from __future__ import annotations


class ShakerError(Exception):
    """Base class of every error raised by the platform's ctx API."""


class ModelError(ShakerError):
    """A model or embeddings call through the ModelProxy failed."""


class DatastoreError(ShakerError):
    """A datastore call failed (unknown store, not bound, read-only binding, bad record)."""


class HttpError(ShakerError):
    """An outbound HTTP request failed without a response (DNS, connect, timeout)."""


class WorkflowError(ShakerError):
    """A nested workflow call failed, or the nesting depth limit was reached."""
