"""Batch over many captures (rotated mirror files), locally or on a Dask cluster.

``run_batch(BatchOptions(inputs, output))`` brings a Parquet dataset up to date with
its inputs: each file is metered and labelled independently on a worker, flows that
cross file boundaries are merged exactly on the client, and a manifest makes reruns
skip what is done. Design and limits: docs/scale.md.
"""

from classifier.batch.runner import BatchOptions, BatchSummary, run_batch
from classifier.batch.work import LabelSpec

__all__ = ["BatchOptions", "BatchSummary", "LabelSpec", "run_batch"]
