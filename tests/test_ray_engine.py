"""Ray engine (``pipelines/ray_images.py``): the local engine's bytes, per-image failures, dying workers.

Everything runs on a local Ray instance limited to 2 CPUs. The byte-for-byte comparison uses the trained
shapes detector + a random SAM 2-tiny (noisy masks, real code paths); the failure tests use the random
detector (no detections: fast) and a stages factory that injects a failure on one chosen image.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray
import ray.cloudpickle

from annotator.api import run
from annotator.config import make_config
from annotator.engine_settings import RaySettings
from annotator.errors import ConfigError, ModelLoadError
from annotator.stages import Stages
from annotator.synthetic import write_synthetic_dataset
from pipelines.ray_images import _annotator_error_in
from pipelines.resources import RayResources

pytestmark = pytest.mark.slow

# The fault-injecting factories below live in this test module, which Ray workers cannot import: ship them
# by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _output_files(d: Path) -> dict[str, bytes]:
    """Every output file but the run report (timings, engine name) and the ledger folder."""
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and ".annotator" not in p.parts and p.name != "run_report.json"
    }


def _config(data: Path, out: Path, det: Path, sam: Path, **kw):
    return make_config(
        data=data, det_model=str(det), sam_model=str(sam), device="cpu", output_dir=out, format="both", **kw
    )


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    """5 inputs over two folders: 3 with shapes, 1 plain (nothing to detect), 1 broken file."""
    root = tmp_path_factory.mktemp("ray") / "shapes"
    write_synthetic_dataset(root, 3, seed=5, image_hw=(320, 320), n_objects=(1, 2), empty_fraction=0.0, labels=None)
    images = root / "images"
    cv2.imwrite(str(images / "sub" / "plain.png"), np.full((160, 200, 3), 127, np.uint8))
    (images / "broken.jpg").write_bytes(b"this is text, not a JPEG")
    return images


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """4 small images for the failure tests; ``odd.png`` alone has another size (found by shape)."""
    images = tmp_path_factory.mktemp("ray_small") / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for rel in ("a.png", "b.png", "sub/c.png"):
        cv2.imwrite(str(images / rel), rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "odd.png"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    return images


@pytest.fixture(scope="module")
def local_outputs(shapes_folder, shapes_detector, sam2_t_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "local"
    cfg = _config(shapes_folder, out, shapes_detector, sam2_t_ckpt, batch_size=2, sam_min_score=0.0)
    summary = run(cfg)
    files = _output_files(out)
    coco = files["annotations.json"]
    assert summary.annotated >= 2 and b'"segmentation"' in coco, "the comparison needs masks to compare"
    return summary, files


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs) shared by the tests that request it; run_ray reuses, never stops it."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()


# ------------------------------------------------------------------------------------------ fault injection


class _FaultyStages(Stages):
    """Stages that fail on one image: ``infer`` (the fused actor's call) by rel_path, and the detector
    (the split detector actor's call) by image shape. ``how="exit"`` kills the worker process instead."""

    bad_rel = ""
    bad_shape: tuple = ()
    how = "raise"

    def _fail(self) -> None:
        if self.how == "exit":
            os._exit(3)
        raise RuntimeError(f"injected failure on {self.bad_rel}")

    def infer(self, inputs):
        if any(getattr(getattr(x, "item", None), "rel_path", None) == self.bad_rel for x in getattr(inputs, "inputs", inputs)):
            self._fail()
        return super().infer(inputs)

    def detect(self, prepared):
        if any(p.image_hw == self.bad_shape[:2] for p in prepared):
            self._fail()
        return super().detect(prepared)


def _faulty_factory(cfg, models, *, bad_rel: str, bad_shape: tuple, how: str) -> Stages:
    st = Stages.build(cfg, models)
    faulty = _FaultyStages(**{f.name: getattr(st, f.name) for f in dataclasses.fields(st)})
    faulty.bad_rel, faulty.bad_shape, faulty.how = bad_rel, bad_shape, how
    return faulty


# ------------------------------------------------------------------------------------------------- tests


def _resources(**settings) -> RayResources:
    return RayResources.from_settings(RaySettings(**settings))


def test_settings_resolve_and_refuse_typos(tmp_path):
    r = _resources(fused=False, actors=3, det_actors=3).resolved(cluster_cpus=8, cluster_gpus=4, device="")
    assert (r.gpus_per_actor, r.det_gpus_per_actor, r.actors, r.det_actors) == (0.75, 0.25, (3, 3), (3, 3))
    r = _resources(gpus_per_actor=0.5).resolved(cluster_cpus=16, cluster_gpus=2, device="")
    assert r.actors == (1, 4) and r.cpus_per_actor == 1.0  # two actors per GPU
    r = _resources().resolved(cluster_cpus=2, cluster_gpus=2, device="cpu")
    assert r.gpus_per_actor == 0.0 and r.actors == (1, 1)
    # split mode on a one-GPU node: the minimum pools (one SAM actor + one detector actor) fit on that GPU
    r = _resources(fused=False).resolved(cluster_cpus=16, cluster_gpus=1, device="")
    assert r.gpus_per_actor * r.actors[0] + r.det_gpus_per_actor * r.det_actors[0] <= 1.0
    data = tmp_path / "d"
    data.mkdir()
    with pytest.raises(ConfigError, match="did you mean 'gpus_per_actor'"):
        make_config(data=data, ray={"gpus_per_actr": 1})
    with pytest.raises(ConfigError, match="ray.max_task_retries"):
        make_config(data=data, ray={"max_task_retries": -1})  # -1 (forever) would let a poison input hang
    with pytest.raises(ConfigError, match="ray.actors"):
        make_config(data=data, ray={"actors": [3, 1]})
    with pytest.raises(ConfigError, match=r"one section now: ray: \{fused"):
        make_config(data=data, ray_fused=False)  # the flat names of earlier versions say where they went
    cfg = make_config(data=data, ray={"fused": False, "actors": [2, 4]})
    assert (cfg.ray.fused, cfg.ray.actors, cfg.ray.max_task_retries) == (False, (2, 4), 2)


def test_worker_errors_come_back_as_one_line_annotator_errors():
    remote = (
        "The actor died because of an error raised in its creation task, ray::MapWorker(...).__init__()\n"
        "  File \"annotator/models.py\", line 186, in load_sam\n"
        "annotator.errors.ModelLoadError: sam_model 'x.pt' does not hold sam2_t.pt weights"
    )
    err = _annotator_error_in(RuntimeError(remote))
    assert isinstance(err, ModelLoadError) and str(err) == "sam_model 'x.pt' does not hold sam2_t.pt weights"
    assert _annotator_error_in(RuntimeError("ValueError: not ours")) is None


@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_udf_raising_on_one_image_fails_only_that_image(
    fused, small_folder, random_yolo_ckpt, sam2_t_ckpt, tmp_path, request
):
    if fused:  # the split case runs first, with no Ray running: the engine starts its own and stops it
        request.getfixturevalue("ray_instance")
    was_running = ray.is_initialized()
    factory = functools.partial(_faulty_factory, bad_rel="odd.png", bad_shape=(64, 80, 3), how="raise")
    cfg = _config(small_folder, tmp_path / "out", random_yolo_ckpt, sam2_t_ckpt, batch_size=4, engine="ray")
    cfg = cfg.model_copy(update={"ray": RaySettings(fused=fused, num_cpus=2)})
    summary = run(cfg, engine_options={"stages_factory": factory})
    assert ray.is_initialized() == was_running
    assert summary.status_counts == {"failed": 1, "empty": 3}
    [failure] = summary.failures
    assert failure["path"] == "odd.png" and "injected failure" in failure["reason"]
    files = _output_files(tmp_path / "out" / "labels")
    assert {"a.txt", "b.txt", "sub/c.txt"} <= set(files) and "odd.txt" not in files


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "split"])
def test_same_bytes_as_local_engine(
    fused, local_outputs, shapes_folder, shapes_detector, sam2_t_ckpt, tmp_path, ray_instance
):
    local_summary, local_files = local_outputs
    cfg = _config(
        shapes_folder, tmp_path / "ray", shapes_detector, sam2_t_ckpt, batch_size=2, sam_min_score=0.0, engine="ray"
    )
    seen = []
    summary = run(cfg.model_copy(update={"ray": RaySettings(fused=fused)}), on_result=seen.append)
    files = _output_files(tmp_path / "ray")
    assert sorted(files) == sorted(local_files)
    for name in local_files:
        assert files[name] == local_files[name], f"{name} differs from the local engine's"
    assert summary.engine == "ray"
    assert summary.status_counts == local_summary.status_counts
    assert summary.failures == local_summary.failures  # broken.jpg: decode_error, same reason
    assert [r.item.rel_path for r in seen] == sorted(r.item.rel_path for r in seen)  # on_result in input order
    assert {"decode", "detect", "segment", "polygonize", "write"} <= set(summary.seconds_per_stage)


def test_worker_dying_on_one_image_ends_failed_without_hanging(
    small_folder, random_yolo_ckpt, sam2_t_ckpt, tmp_path, ray_instance
):
    factory = functools.partial(_faulty_factory, bad_rel="b.png", bad_shape=(), how="exit")
    cfg = _config(small_folder, tmp_path / "out", random_yolo_ckpt, sam2_t_ckpt, batch_size=4, engine="ray")
    cfg = cfg.model_copy(update={"ray": RaySettings(max_task_retries=0)})
    summary = run(cfg, engine_options={"stages_factory": factory})
    assert summary.status_counts == {"failed": 1, "empty": 3}  # its batch-mates were re-run alone and kept
    [failure] = summary.failures
    assert failure["path"] == "b.png" and "worker" in failure["reason"] and "lost" in failure["reason"]
