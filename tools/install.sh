#!/usr/bin/env bash
# `make install`: this checkout's .venv, a small virtual environment of its own holding the editable install of
# this checkout's eva02, layered (one .pth line) on the shared third-party environment that tools/build_env.sh
# builds once per machine. Two clones therefore share torch/mmcv/detectron2 but each imports its own code, and
# two installs at once do not touch each other's files. Idempotent: seconds when the shared environment exists.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ENV=$(bash tools/build_env.sh)
SITE=$("$ENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

if [ -L .venv ]; then rm .venv  # the earlier layout: a link to the shared environment itself
elif [ -e .venv ] && [ ! -f .venv/eva02-shared-env ]; then
  echo "[install] .venv exists and was not made by tools/install.sh; move it away and run make install again" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/eva02-shared-env 2>/dev/null)" != "$ENV" ]; then
  echo "[install] .venv of this checkout, on the shared environment $ENV"
  rm -rf .venv
  "$ENV/bin/python" -m venv --without-pip .venv  # same base interpreter as the shared environment
  LOCAL=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # addsitedir (not a bare path) so the shared environment's own .pth files run too.
  echo "import site; site.addsitedir('$SITE')" > "$LOCAL/eva02-shared-env.pth"
  echo "$ENV" > .venv/eva02-shared-env
fi

echo "[install] editable install of this checkout's eva02"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
.venv/bin/python - "$ROOT" <<'PY'
import sys
from pathlib import Path

import eva02.backbone, eva02.common, eva02.det, eva02.seg  # noqa: E401, F401 -- the full stack imports
root = Path(sys.argv[1]).resolve()
for name in ("eva02.backbone", "eva02.common", "eva02.det", "eva02.seg"):
    where = Path(sys.modules[name].__file__).resolve()
    if root not in where.parents:
        sys.exit(f"[install] {name} imports from {where}, outside this checkout {root}: remove that install")
print(f"[install] ready: .venv imports eva02 from {root}")
PY
