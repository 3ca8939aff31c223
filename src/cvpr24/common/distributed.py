"""The default process group of a ``torchrun`` launch, made so that the process can exit cleanly.

With torch 2.13, importing ``torch._dynamo`` after the default group exists (the
``DistributedDataParallel`` constructor imports it) leaves references to the group that
``destroy_process_group`` cannot drop. The group's gloo worker threads then live on into
interpreter shutdown, and a worker that frees a finished collective there (its captured thread
state holds a Python ``contextvars.Context``) asks for the GIL while Python finalises: the
thread is unwound through a ``noexcept`` destructor and the process aborts (SIGABRT), about
one launch in a hundred on a loaded machine. With ``torch._dynamo`` imported before the group is
made, ``destroy_process_group`` frees the group and joins its workers while Python still runs.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist


def launched() -> bool:
    """Whether this process is one rank of a multi-process launch (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(backend: str) -> None:
    """``torch.distributed.init_process_group(backend)``, with ``torch._dynamo`` imported first
    so that :func:`torch.distributed.destroy_process_group` can free the group (see above)."""
    import torch._dynamo  # noqa: F401  (import order matters, see the module docstring)

    dist.init_process_group(backend)


@contextmanager
def process_group(backend: str) -> Iterator[bool]:
    """Hold the default process group for the block when :func:`launched`, made by
    :func:`init_process_group` and destroyed on leaving, whether the block returns or raises.
    Yields whether a group was made; outside a launch it does nothing."""
    if not launched():
        yield False
        return
    init_process_group(backend)
    try:
        yield True
    finally:
        dist.destroy_process_group()
