"""Where a SAM / SAM 2 image-encoder pass spends its time on this machine, and what the knobs do.

Variants (timed alternately, medians and ranges over ``--repeats``; seconds per image):

* ``t1``/``tN``: eager fp32 with 1 / N torch threads (Ultralytics' ``select_device`` sets ``cpu_count - 1``);
* ``bB``: batch of B images (this and the next variants use ``--knob-threads``, default 1) in one call (per image);
* ``cl``: ``channels_last`` input and conv weights;
* ``math``: ``scaled_dot_product_attention`` forced to its math backend (the default picks flash-for-CPU);
* ``compile``: ``torch.compile`` of the image encoder (``--compile``; compile time printed separately).

Also prints the torch profiler's top ops for one pass, the mask decoder's cost for K boxes in one call vs K
calls, and the preprocessing (letterbox + normalise) cost. Random weights: speed does not depend on them.

    python benchmarks/profile_encoder.py --sam sam2_t --repeats 3 --threads 1 2 --batch 2 [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> None:
    import torch
    from ultralytics.models.sam import build

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sam", default="sam2_t", choices=["sam2_t", "sam2_s", "sam2_b", "mobile_sam", "sam_b"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--knob-threads", dest="knob_threads", type=int, default=1, help="threads for the other variants")
    p.add_argument("--batch", type=int, default=2, help="also time a batch of this many images (0: skip)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--sdpa-math", action="store_true", help="also time SDPA forced to the math backend")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the top ops of one pass")
    p.add_argument("--boxes", type=int, default=5, help="boxes for the decoder timing")
    a = p.parse_args(argv)

    builder = {"sam2_t": "build_sam2_t", "sam2_s": "build_sam2_s", "sam2_b": "build_sam2_b",
               "mobile_sam": "build_mobile_sam", "sam_b": "build_sam_vit_b"}[a.sam]  # fmt: skip
    torch.manual_seed(0)
    model = getattr(build, builder)(None).eval()
    sam2 = a.sam.startswith("sam2")
    enc = model.image_encoder
    x1 = torch.randn(1, 3, 1024, 1024)
    xb = torch.randn(a.batch, 3, 1024, 1024) if a.batch > 1 else None
    max_threads = a.knob_threads
    variants: dict[str, tuple] = {f"t{t}": (enc, x1, t) for t in a.threads}
    if xb is not None:
        variants[f"b{a.batch} t{max_threads}"] = (enc, xb, max_threads)
    with torch.inference_mode():
        ref = enc(x1)
        if a.channels_last:
            import copy

            enc_cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
            variants[f"cl t{max_threads}"] = (enc_cl, x1.contiguous(memory_format=torch.channels_last), max_threads)
        if a.compile:
            torch.set_num_threads(max_threads)
            cenc = torch.compile(enc, dynamic=False)
            t0 = time.perf_counter()
            out = cenc(x1)
            print(f"compile + first pass: {time.perf_counter() - t0:.1f} s", flush=True)
            key = "vision_features" if sam2 else None
            diff = (out[key] - ref[key]).abs().max() if sam2 else (out - ref).abs().max()
            print(f"compiled vs eager: max abs diff of the image embedding {float(diff):.2e}", flush=True)
            variants[f"compile t{max_threads}"] = (cenc, x1, max_threads)
        if a.sdpa_math:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def math_enc(x, _enc=enc):
                with sdpa_kernel(SDPBackend.MATH):
                    return _enc(x)

            variants[f"math t{max_threads}"] = (math_enc, x1, max_threads)
        for name, (m, x, t) in variants.items():  # warm-up each variant once
            torch.set_num_threads(t)
            m(x)
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(a.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                m, x, t = variants[name]
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - t0) / x.shape[0])
        print(f"{a.sam} image encoder, 1024x1024, seconds per image (median, min..max of {a.repeats}):")
        base = statistics.median(times[names[0]])
        for name in names:
            v = times[name]
            print(f"  {name:<14} {statistics.median(v):7.2f} s  ({min(v):.2f}..{max(v):.2f})  "
                  f"x{base / statistics.median(v):.2f} vs {names[0]}")  # fmt: skip

        torch.set_num_threads(max_threads)
        if a.profile:
            from torch.profiler import profile

            with profile() as prof:
                enc(x1)
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            print("top ops of one eager pass (self CPU share):")
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
                print(f"  {e.key:<48} {100 * e.self_cpu_time_total / total:5.1f}%  ({e.count} calls)")

        # mask decoder: K boxes in one call vs K calls
        if sam2:
            from annotator import sam_ops

            with torch.inference_mode():
                feats = sam_ops.encode(model, "sam2", x1)
            boxes = torch.tensor([[100 + 50 * k, 100, 300 + 50 * k, 400] for k in range(a.boxes)], dtype=torch.float32)

            def decode(b):
                with torch.inference_mode():
                    return sam_ops.decode_one_image(model, "sam2", feats, 0, b)

            decode(boxes)
            t_one, t_each = [], []
            for r in range(a.repeats):
                t0 = time.perf_counter()
                decode(boxes)
                t_one.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for k in range(a.boxes):
                    decode(boxes[k : k + 1])
                t_each.append(time.perf_counter() - t0)
            print(f"mask decoder, {a.boxes} boxes: one call {statistics.median(t_one) * 1e3:.0f} ms, "
                  f"{a.boxes} calls {statistics.median(t_each) * 1e3:.0f} ms")  # fmt: skip

    # preprocessing: ours vs Ultralytics' predictor (letterbox to 1024, BGR->RGB, normalise)
    from ultralytics.data.augment import LetterBox

    img = (np.random.default_rng(0).random((720, 1280, 3)) * 255).astype(np.uint8)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    for _ in range(5):
        lb = LetterBox((1024, 1024), auto=False, center=False)(image=img)
        t = torch.from_numpy(np.ascontiguousarray(lb[None, ..., ::-1].transpose(0, 3, 1, 2))).float()
        _ = (t - mean) / std
    print(f"preprocess 720x1280 -> 1024 (letterbox + normalise): {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
