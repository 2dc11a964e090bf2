"""Imported once by the local pool's fork server, before it forks the worker processes.

Starting a worker costs about 3 s of CPU: importing the engine, loading the compiled
kernels from numba's cache, importing scikit-learn and skops and loading the model
(the client names it in ``VPNID_BATCH_PRELOAD_MODEL`` when it starts the server). Done
here once, in the fork server, every worker starts from a copy of this process with
all of it in place (copy-on-write), instead of paying it again per worker. The fork
server is a fresh process (not a fork of the client), so workers inherit no client
state: no threads, no open files, no half-written output.
"""

from __future__ import annotations

import contextlib

with contextlib.suppress(Exception):  # a worker imports whatever is missing on its own
    import classifier.batch.work
    import classifier.flows.finalize
    import classifier.model
    import classifier.pipeline
    import classifier.signatures  # noqa: F401
    from classifier._warmup import warm

    warm()  # loads the cached compiled kernels of the reader, decoder and meter

    import os

    from classifier.batch._preload_env import PRELOAD_MODEL_ENV
    from classifier.batch.work import _model

    if os.environ.get(PRELOAD_MODEL_ENV):
        _model(os.environ[PRELOAD_MODEL_ENV])  # cached per path: workers find it loaded
