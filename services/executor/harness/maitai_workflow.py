"""Compatibility with scripts written for the hosted product: `from maitai_workflow import WorkflowContext`."""
from shaker import DatastoreError, HttpError, ModelError, ShakerError, WorkflowContext, WorkflowError

__all__ = ["WorkflowContext", "ShakerError", "ModelError", "DatastoreError", "HttpError", "WorkflowError"]
