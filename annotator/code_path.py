"""Which code path the models take: the CUDA one (fixed-shape batches, one host copy per batch) or the CPU one.

On a CUDA device the model thread runs the *CUDA code path*: detector batches of ``batch_size`` images
(padded), the SAM encoder on fixed ``batch_size`` chunks queued before any host work on the detector's
output, the detector's NMS results brought to the host in one copy per batch, decoder calls padded to a few
bucket sizes. On a CPU the default path is tuned for CPUs instead (batch 1 detector, per-image encoder
workers, small decoder calls).

The environment variable ``ANNOTATOR_CUDA_CODE_PATH=1`` makes a CPU run take the CUDA code path's batching,
padding and copy structure (pinned memory and CUDA streams are skipped: they need a GPU), so that tests and
``python -m benchmarks.syncs`` can check on a CPU the code a GPU will run. It changes no result beyond float
rounding of batched calls (tested: ``tests/test_cuda_code_path.py``).

Example:
    >>> import os
    >>> os.environ.pop(ENV_VAR, None) and None
    >>> cuda_code_path("cpu")
    False
    >>> os.environ[ENV_VAR] = "1"; cuda_code_path("cpu")
    True
    >>> del os.environ[ENV_VAR]
"""

from __future__ import annotations

import os

ENV_VAR = "ANNOTATOR_CUDA_CODE_PATH"


def forced() -> bool:
    """``ANNOTATOR_CUDA_CODE_PATH`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def on_cuda(device) -> bool:
    """``device`` (a torch device, or a string as in the settings: ``""`` auto, ``"cpu"``, ``"0"``, ``"cuda:1"``,
    ``"mps"``) is a CUDA device that is available."""
    kind = getattr(device, "type", None)
    if kind is not None:
        return kind == "cuda"
    d = str(device).strip().lower()
    if d in {"cpu", "mps"}:
        return False
    import torch

    return torch.cuda.is_available()


def cuda_code_path(device) -> bool:
    """The models on ``device`` take the CUDA code path: on a CUDA device, or anywhere with the variable set."""
    return forced() or on_cuda(device)
