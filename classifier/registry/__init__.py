"""The registered-IP list: loading with line-numbered validation, and vectorized matching.

``Registry.load(path, strict=False, log=None)`` reads a CSV or Parquet list
(docs/registry.md); ``Registry.annotate(table)`` adds ``REGISTRY_FIELDS`` to a
classified flow table.
"""

from classifier.registry.loader import COLUMNS, Entry, RegistryError, RowProblem
from classifier.registry.registry import REGISTRY_COLUMNS, Registry

__all__ = ["COLUMNS", "REGISTRY_COLUMNS", "Entry", "Registry", "RegistryError", "RowProblem"]
