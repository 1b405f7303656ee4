#!/usr/bin/env bash
# Download into DIR the wheels a bare GPU machine needs to run `python -m benchmarks.gpu_check`:
# everything `annotator`'s local engine and Ultralytics import, beyond torch, torchvision, numpy and opencv
# (which that machine has). Binary wheels only, no dependencies resolved (the list is the closure, found by
# importing in a venv with only those four: tests/test_gpu_check.py), manylinux x86-64 for the Python
# version given (default: this interpreter's). No Ray: the local engine does not import it.
#
#   tools/gpu_wheels.sh DIR [PYTHON_VERSION]      # e.g. tools/gpu_wheels.sh /tmp/wheels 3.11
#   (on the GPU machine:) python -m pip install --no-index --find-links DIR $(cat DIR/requirements.txt)
#
# The folder stays under 64 MiB (the device tool's carry limit); the script fails if it does not.
set -euo pipefail
dir=${1:?usage: tools/gpu_wheels.sh DIR [PYTHON_VERSION]}
pyver=${2:-$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
pkgs=(
  ultralytics            # detector, SAM 2 builders, auto_annotate (the contender)
  ultralytics-thop       # imported by ultralytics.utils.torch_utils
  psutil                 # ultralytics.utils
  pyyaml                 # ultralytics cfg, annotator config
  requests urllib3 idna charset-normalizer certifi   # ultralytics.utils (downloads, checks) at import
  tqdm                   # annotator progress
  shapely                # annotator polygons
  pycocotools            # annotator COCO export / evaluation
  pydantic pydantic-core annotated-types typing-inspection typing-extensions   # annotator config
  pillow                 # ultralytics data loaders (torchvision brings it too)
)
printf '%s\n' "${pkgs[@]}" | sed 's/#.*//' | tr ' ' '\n' | sed '/^$/d' > "$dir/requirements.txt"
python -m pip download --quiet --only-binary=:all: --no-deps --dest "$dir" \
  --python-version "$pyver" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 --platform any \
  $(cat "$dir/requirements.txt")
size=$(du -sm "$dir" | cut -f1)
echo "$dir: $(ls "$dir"/*.whl | wc -l) wheels, ${size} MiB"
if [ "$size" -ge 64 ]; then echo "error: $dir is ${size} MiB (>= 64 MiB, more than the device tool carries)" >&2; exit 1; fi
