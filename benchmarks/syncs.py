"""Host syncs per batch in the model thread: a CPU-side proxy for what would stall a GPU.

:class:`HostSyncCounter` is a ``TorchDispatchMode`` (aten ops whose result the host must read: ``.item()`` /
``bool()`` (``aten._local_scalar_dense``), ``aten.nonzero``, boolean-mask indexing and assignment,
``masked_select``, ``unique``, ``equal``, ``repeat_interleave`` without an output size, torchvision's ``nms``,
whose CUDA kernel copies its mask to the host) plus a ``TorchFunctionMode`` for the copies to the host
(``Tensor.cpu()``, ``.tolist()``): on a CPU those are no-ops that never reach the dispatcher, on CUDA each one
waits for the device. ``.to(device)`` is not counted: on a CPU run an upload to the model's device and a copy
to the host look the same, so the code copies to the host with ``.cpu()`` only. Modes are thread-local: the
counter sees the thread it is entered on.
Host work on numpy arrays is not counted (it is what the host does while the device runs).

``python -m benchmarks.syncs`` runs :meth:`annotator.stages.Stages.infer` (the model thread's work) on
synthetic shapes images with the project's shapes detector and a random-weight SAM 2-tiny, on the CUDA code
path (``ANNOTATOR_CUDA_CODE_PATH=1``, set by default), and prints the syncs of each batch::

    python -m benchmarks.syncs --batch-sizes 4 8 --prompts detector boxes
    python -m benchmarks.syncs --batch-sizes 4 8 --emulate-cuda-path   # code without the switch (before)

Example:
    >>> import torch
    >>> with HostSyncCounter() as c:
    ...     x = torch.arange(6.0)
    ...     _ = x[x > 2], x.sum().item(), x.cpu()
    >>> c.total, sorted(c.by_op)
    (3, ['Tensor.cpu', 'aten._local_scalar_dense', 'boolean-mask index'])
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES_DETECTOR = REPO / "sample_data" / "models" / "shapes_yolo11n.pt"

_SYNC_OPS = {  # aten overload packets whose result (or output size) the host must read
    "_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "equal", "allclose", "unique", "_unique",
    "_unique2", "unique_dim", "unique_consecutive", "bincount",
}  # fmt: skip
_MASK_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: collections.Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        ns = func.namespace
        if ns == "aten" and name in _SYNC_OPS:
            self.counts[f"aten.{name}"] += 1
        elif ns == "aten" and name in _MASK_INDEX_OPS and _has_bool_index(args):
            self.counts["boolean-mask index"] += 1
        elif name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") and (
            kwargs.get("output_size") is None
        ):  # repeats given as a tensor and no output size: the host reads the total
            self.counts["aten.repeat_interleave"] += 1
        elif ns == "torchvision" and name == "nms":
            self.counts["torchvision.nms"] += 1
        return func(*args, **kwargs)


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, counts: collections.Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("cpu", "tolist"):
            if args and isinstance(args[0], torch.Tensor):
                self.counts[f"Tensor.{name}"] += 1
        return func(*args, **kwargs)


class HostSyncCounter:
    """Count the host syncs of the torch calls made on this thread inside ``with`` (see the module docstring).

    Attributes:
        by_op: ``Counter`` of sync kinds (``"aten.nonzero"``, ``"Tensor.cpu"``, ``"boolean-mask index"``...).
        total: their sum.
    """

    def __init__(self) -> None:
        self.by_op: collections.Counter = collections.Counter()
        self._modes = (_FunctionCounter(self.by_op), _DispatchCounter(self.by_op))

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __enter__(self) -> HostSyncCounter:
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)


def syncs_per_batch(stages, cfg, items) -> list[collections.Counter]:
    """``stages.infer`` (the model thread's step) on ``items`` in batches of ``cfg.batch_size``, prepared and
    collated outside the counter: the syncs of each batch."""
    from annotator.stages import decode_or_error

    out = []
    for k in range(0, len(items), cfg.batch_size):
        prepared = [stages.prepare(decode_or_error(it, cfg)) for it in items[k : k + cfg.batch_size]]
        batch = stages.collate(prepared)
        with HostSyncCounter() as c:
            results = stages.infer(batch)
        failed = [r for r in results if getattr(r, "status", None) is not None and r.status.value == "failed"]
        assert not failed, failed[:1]
        out.append(c.by_op)
    return out


def emulate_cuda_path(stages, batch_size: int) -> None:
    """For code without ``ANNOTATOR_CUDA_CODE_PATH`` (the 'before' count): the CUDA path's batching set by hand
    (detector batch, one encoder call per batch, padded decoder calls; 16 boxes per call, not 256, to spare a
    CPU's memory: the sync count does not depend on it)."""
    stages.det_batch = batch_size
    seg = stages.segmenter
    seg._cuda, seg.cpu_workers, seg.encoder_batch, seg.max_decoder_boxes = True, 1, batch_size, 16


def measure(root: Path, batch_sizes, prompts, *, images: int, image_hw, emulate: bool = False,
            device: str = "cpu", sam_name: str = "sam2_t") -> list[dict]:
    """Syncs per batch for each prompt mode and batch size on ``images`` synthetic images (under ``root``), with
    the models on ``device`` (``"cpu"``: a proxy, with ``ANNOTATOR_CUDA_CODE_PATH=1`` for the CUDA path)."""
    from annotator.config import make_config
    from annotator.models import resolve_models
    from annotator.random_weights import write_random_sam
    from annotator.sources import scan_sources
    from annotator.stages import Stages
    from annotator.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(root / "ds", images, image_hw=image_hw, subdirs=("",), empty_fraction=0.0,
                                   labels="box", ext=".png", n_objects=(2, 5))  # fmt: skip
    sam = write_random_sam(root / "weights", sam_name)
    rows = []
    for mode in prompts:
        for b in batch_sizes:
            extra = {"prompts": "boxes", "prompt_labels": data / "labels"} if mode == "boxes" else {}
            cfg = make_config(data=data / "images", det_model=str(SHAPES_DETECTOR), sam_model=str(sam), device=device,
                              batch_size=b, output_dir=root / "out", **extra)  # fmt: skip
            prompt_file = cfg.prompt_labels if mode == "boxes" else None
            models = resolve_models(cfg.det_model, cfg.sam_model, prompt_labels=prompt_file)
            stages = Stages.build(cfg, models)
            if emulate:
                emulate_cuda_path(stages, b)
            items = scan_sources(cfg.data).items
            items = items[: len(items) // b * b] or items  # full batches
            per = syncs_per_batch(stages, cfg, items)
            ops = sum(per, collections.Counter())
            rows.append({
                "prompts": mode, "batch": b, "batches": len(per),
                "syncs_per_batch_max": max(sum(c.values()) for c in per),
                "syncs_per_batch_mean": round(sum(sum(c.values()) for c in per) / len(per), 2),
                "by_op_per_batch": {k: round(v / len(per), 2) for k, v in sorted(ops.items())},
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.syncs", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    p.add_argument("--prompts", nargs="+", default=["detector", "boxes"], choices=["detector", "boxes"])
    p.add_argument("--batches", type=int, default=2, help="batches per batch size (images = batches x size)")
    p.add_argument("--image-hw", default="160x224", help="HxW of the synthetic images")
    p.add_argument("--default-path", action="store_true", help="leave ANNOTATOR_CUDA_CODE_PATH unset")
    p.add_argument("--emulate-cuda-path", action="store_true", help="set the CUDA path's batching by hand (before)")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(argv)
    if not ns.default_path and not ns.emulate_cuda_path:
        os.environ["ANNOTATOR_CUDA_CODE_PATH"] = "1"
    torch.set_num_threads(1)
    h, _, w = ns.image_hw.lower().partition("x")
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp), ns.batch_sizes, ns.prompts, images=ns.batches * max(ns.batch_sizes),
                       image_hw=(int(h), int(w)), emulate=ns.emulate_cuda_path)  # fmt: skip
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        print("| prompts | batch | syncs per batch (max) | by op, per batch |\n| --- | --- | --- | --- |")
        for r in rows:
            ops = ", ".join(f"{k} {v:g}" for k, v in r["by_op_per_batch"].items())
            print(f"| {r['prompts']} | {r['batch']} | {r['syncs_per_batch_max']} | {ops} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
