"""A virtual environment shaped like a bare GPU machine: only torch, torchvision, numpy and opencv.

:func:`make_bare_venv` creates ``python -m venv`` *without* system site packages and links into it exactly
the distributions ``torch``, ``torchvision``, ``numpy`` and ``opencv-python(-headless)`` and their own
(non-extra) requirements from the running interpreter's site-packages: a folder of symlinks named by a
``.pth`` file, so nothing is downloaded or copied. Everything else (ultralytics, shapely, pydantic...) must
then come from the wheel folder of ``tools/gpu_wheels.sh`` via ``pip install --no-index --find-links DIR``.
Used by ``tests/test_gpu_check.py``.

Example:
    >>> sorted(n for n in base_distributions() if n in {"torch", "numpy"})
    ['numpy', 'torch']
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

BASE = ("torch", "torchvision", "numpy", "opencv-python", "opencv-python-headless")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_distributions(roots=BASE) -> dict[str, md.Distribution]:
    """The installed distributions of ``roots`` and their non-extra requirements, by normalised name."""
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for req in dist.requires or ():
            if "extra ==" in req or "extra==" in req:
                continue
            m = re.match(r"\s*([A-Za-z0-9_.\-]+)", req)
            if m:
                todo.append(m.group(1))
    return found


def link_farm(dest: Path, dists: dict[str, md.Distribution]) -> Path:
    """Symlink each distribution's top-level files/folders (and its dist-info) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        for f in dist.files or ():
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".data"):
                continue
            src, link = base / top, dest / top
            if src.exists() and not link.exists():
                link.symlink_to(src)
    return dest


def make_bare_venv(venv: Path) -> Path:
    """Create the venv at ``venv`` and return its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    farm = link_farm(venv / "base-packages", base_distributions())
    (site / "zz_base_packages.pth").write_text(str(farm) + os.linesep)
    return py
