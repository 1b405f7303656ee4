"""Train / val / test splits of the written dataset: the ``split:`` setting and the stable assignment.

Each labelled image goes to one split, decided by its path relative to ``data`` alone, so an image never
changes split as the folder grows, between runs, or between machines:

* a tree that is already split keeps its split: a path whose top-level folder (or the folder under a
  top-level ``images/``) is named ``train``, ``val`` / ``valid`` / ``validation`` or ``test`` goes to that
  split whatever the fractions (Ultralytics' ``images/train``, ``images/val`` layout; Roboflow's ``valid``);
* any other path is hashed: ``u = sha256(rel_path as posix) -> [0, 1)``; ``u < val`` is val,
  ``val <= u < val + test`` is test, the rest is train. A video's frames all take the video's split (its
  path is hashed, not the frames').

Changing the fractions is a format-only change: it moves only images whose ``u`` lies between the old and
the new bound, and it never re-runs a model (``split`` is in neither run fingerprint: ``data.yaml`` and the
lists are rebuilt from the ledger at the end of every run, see :mod:`annotator.output`).

Example:
    >>> s = SplitSettings(val=0.2)
    >>> split_of("a/b.jpg", s) in SPLITS, split_of("images/val/x.jpg", s), split_of("train/x.jpg", s)
    (True, 'val', 'train')
    >>> split_of("a/b.jpg", s) == split_of("a/b.jpg", SplitSettings(val=0.2))  # same path, same split
    True
"""

from __future__ import annotations

import hashlib
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: the splits, in the order they appear in ``data.yaml``
SPLITS = ("train", "val", "test")

#: folder name (case-insensitive) -> split, for trees that are already split
FOLDER_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class SplitSettings(BaseModel):
    """The ``split:`` section: fractions of the images hashed into val and test (the rest is train).

    Attributes:
        val: fraction in [0, 1) of the images that go to val (default 0.1). ``0``: no val split; ``data.yaml``
            then validates on the training images, as before this setting existed.
        test: fraction in [0, 1) that goes to test (default 0: no test split). ``val + test`` must be < 1.

    In YAML: ``split: {val: 0.1, test: 0.05}``; CLI ``--val-fraction 0.1 --test-fraction 0.05``; API
    ``split={"val": 0.1}``. (``val_from: reviewed``, the reviewed images as val, is not built yet.)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    val: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the images hashed into val, in [0, 1)")
    test: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the images hashed into test, in [0, 1)")

    @model_validator(mode="after")
    def _sum_below_one(self) -> SplitSettings:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must be below 1 (something must be left to train on), got {self.val} + {self.test}")
        return self


def path_fraction(rel_path: str) -> float:
    """A number in [0, 1) fixed by the path alone: the first 64 bits of SHA-256 of its posix form.

    Example:
        >>> path_fraction("a/b.jpg") == path_fraction("a\\\\b.jpg") == path_fraction("a/b.jpg")
        True
        >>> 0.0 <= path_fraction("x.png") < 1.0
        True
    """
    posix = str(rel_path).replace("\\", "/")
    return int.from_bytes(hashlib.sha256(posix.encode("utf-8")).digest()[:8], "big") / 2.0**64


def folder_split(rel_path: str) -> str | None:
    """The split a pre-split tree gives the path (``train/``, ``val/``, ``images/val/`` ...), else None.

    Example:
        >>> folder_split("val/a.jpg"), folder_split("images/Test/a.jpg"), folder_split("valid/x/a.jpg")
        ('val', 'test', 'val')
        >>> folder_split("a.jpg"), folder_split("cats/val/a.jpg"), folder_split("train.jpg")
        (None, None, None)
    """
    parts = PurePath(str(rel_path).replace("\\", "/")).parts[:-1]  # folders only: a file named val.jpg is not one
    if parts and parts[0].lower() == "images":
        parts = parts[1:]
    return FOLDER_SPLITS.get(parts[0].lower()) if parts else None


def split_of(rel_path: str, settings: SplitSettings) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for an image (or a video) at ``rel_path`` relative to ``data``."""
    preset = folder_split(rel_path)
    if preset is not None:
        return preset
    u = path_fraction(rel_path)
    if u < settings.val:
        return "val"
    if u < settings.val + settings.test:
        return "test"
    return "train"
