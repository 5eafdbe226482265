#!/usr/bin/env bash
# Builds the heavy third-party environment (torch, mmcv with ops, detectron2, the pinned packages) once into a
# cache folder keyed by a hash of this script and requirements/pinned.txt, shared by every checkout on the
# machine. It never installs eva02 itself: each checkout's .venv layers its own editable install on top
# (tools/install.sh), so two clones never import each other's code. Prints the environment's path last.
# A lock serializes builders: a second checkout installing at the same time waits, then reuses the result.
# Each step names itself; a failure says which step broke.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 3>&1 1>&2  # progress on stderr; stdout (fd 3) carries only the path
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

TORCH=2.13.0 TORCHVISION=0.28.0 MMCV=2.1.0 MMSEG=1.2.2 MMDET=3.3.0 DETECTRON2=0.7.2
KEY=$(cat tools/build_env.sh requirements/pinned.txt | sha256sum | cut -c1-16)
CACHE=${EVA02_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eva02}
VENV=$CACHE/env-$KEY

step() { CURRENT_STEP="$1"; echo "[install] $1"; }
trap 'echo "[install] FAILED at step: ${CURRENT_STEP:-start} (log above)" >&2' ERR

mkdir -p "$CACHE"
exec 9>"$VENV.lock"
flock 9
if [ -f "$VENV/.ready" ]; then echo "$VENV" >&3; exit 0; fi

step "create virtual environment $VENV"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade "pip<25"

# The machine's pip config offers a local CPU-only torch wheel; the registry's torchvision needs the
# standard (CUDA) torch build, which also runs on a CPU-only machine. Point find-links at an empty folder.
EMPTY=$(mktemp -d)
export PIP_FIND_LINKS=$EMPTY
step "torch==$TORCH + torchvision==$TORCHVISION (matched pair from the registry)"
"${PIP[@]}" install -q "torch==$TORCH" "torchvision==$TORCHVISION"
"$VENV/bin/python" -c "import torchvision.ops as o, torch; o.nms(torch.zeros(1,4), torch.ones(1), 0.5)"

step "pinned pure-Python packages"
"${PIP[@]}" install -q -r requirements/pinned.txt "torch==$TORCH"

step "mmsegmentation==$MMSEG and mmdet==$MMDET (their own deps are in pinned.txt; mmcv is built below)"
"${PIP[@]}" install -q --no-deps "mmsegmentation==$MMSEG" "mmdet==$MMDET"

step "mmcv==$MMCV with CPU ops (compiled, ~5 min once; pip caches the wheel)"
MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="-DNDEBUG -g0 -fwrapv -O3" \
  "${PIP[@]}" install -q --no-build-isolation --no-deps "mmcv==$MMCV"
"$VENV/bin/python" -c "from mmcv.ops import soft_nms, point_sample; import mmseg, mmdet"

# detectron2 is on the registry only as sal-detectron2 (upstream source, pure Python), tagged cp310:
# fetch that file and install it under its honest py3-none-any name, without letting pip resolve its
# numpy<2 pin.
step "detectron2 (sal-detectron2==$DETECTRON2)"
DL=$(mktemp -d)
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$DL" "sal-detectron2==$DETECTRON2"
WHL=$(ls "$DL"/*.whl)
mv "$WHL" "$DL/$(basename "$WHL" | sed -E 's/-cp310-none-any|-cp310-cp310-[^.]+/-py3-none-any/')"
"${PIP[@]}" install -q --no-deps "$DL"/*.whl
"$VENV/bin/python" -c "import detectron2.modeling, detectron2.config"

touch "$VENV/.ready"
echo "[install] ready: $VENV"
echo "$VENV" >&3
