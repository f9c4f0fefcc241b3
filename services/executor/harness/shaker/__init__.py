"""Shaker's workflow API: `from shaker import WorkflowContext`. Standard library only."""
from __future__ import annotations

from .errors import DatastoreError, HttpError, ModelError, ShakerError, WorkflowError
from .context import WorkflowContext

__all__ = ["WorkflowContext", "ShakerError", "ModelError", "DatastoreError", "HttpError", "WorkflowError"]
