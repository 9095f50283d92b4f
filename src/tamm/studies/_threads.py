"""Limit every numeric library of a study worker process to one thread.

This module imports nothing heavy, so a process pool can run :func:`limit_threads` as its
initializer before numpy, scipy or TensorFlow are loaded. The environment variables then take
effect when those libraries start. Libraries already loaded are limited through threadpoolctl
(if installed). TensorFlow is limited through its threading API by
:func:`configure_tensorflow_threads`, which methods call just before they first use it, and
which does nothing outside worker processes. Only the task functions of
:mod:`tamm.studies.worker` call :func:`limit_threads`, and only in worker processes.
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure_tensorflow_threads", "limit_threads"]


def __dir__() -> list[str]:
    return __all__


_state = {"in_worker": False}

_ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}


def limit_threads() -> None:
    """Set one thread for BLAS, OpenMP and TensorFlow in this (worker) process."""
    _state["in_worker"] = True
    os.environ.update(_ONE_THREAD)
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        threadpool_limits(limits=1)
    if "tensorflow" in sys.modules:
        configure_tensorflow_threads()


def configure_tensorflow_threads() -> None:
    """Give TensorFlow one intra-op and one inter-op thread in a worker process.

    Does nothing in a process where :func:`limit_threads` was not called, or once
    TensorFlow's runtime has started (it then rejects the change).
    """
    if not _state["in_worker"]:
        return
    import tensorflow as tf

    if (
        tf.config.threading.get_intra_op_parallelism_threads() == 1
        and tf.config.threading.get_inter_op_parallelism_threads() == 1
    ):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow rejects the change once its runtime is initialised. The environment
        # variables of limit_threads still apply if they were set before that.
        pass
