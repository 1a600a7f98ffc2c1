#!/usr/bin/env bash
# The GPU check on a lent GPU machine: the command a session passes to the device tool's `run`
# (bench/README.md, "The GPU check", says how to call it and what comes back):
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# That machine has Python 3.12 with PyTorch, numpy, scikit-learn and pandas, but not Ray, Optuna,
# MLflow, Opacus or pydantic, and reaches no registry: .whl/gpu_site.tar.xz (built here, before
# the call, by `.venv/bin/python bench/gpu_bundle.py`) carries them; this script unpacks it to
# $GPU_CHECK_SITE and puts it on PYTHONPATH, then runs bench/gpu_check.py with the arguments
# given (e.g. `--parts study` to re-run one part). Figures go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
site=${GPU_CHECK_SITE:-/tmp/pptp-gpu-site}
archive=${GPU_CHECK_ARCHIVE:-.whl/gpu_site.tar.xz}
manifest=$(dirname "$archive")/gpu_site.txt
python=${PYTHON:-python3}

if [ -f "$archive" ] && [ ! -f "$site/gpu_site.txt" ]; then
  want=$(head -n 1 "$manifest" 2>/dev/null | cut -d' ' -f2)
  have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -n "$want" ] && [ "$want" != "$have" ]; then
    echo "error: $archive was built for Python $want, this machine runs $have;" \
      "rebuild it with: .venv/bin/python bench/gpu_bundle.py --python-version $have" >&2
    exit 2
  fi
  start=$(date +%s)
  mkdir -p "$site"
  "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="fully_trusted")' \
    "$archive" "$site" || { echo "error: could not unpack $archive into $site" >&2; exit 2; }
  echo "unpacked $archive into $site in $(( $(date +%s) - start ))s"
elif [ ! -f "$archive" ]; then
  echo "note: no $archive (build it with bench/gpu_bundle.py and carry .whl); using the packages" \
    "this machine has"
fi

export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE=disabled
"$python" - "$site/gpu_site.txt" <<'EOF'
# what the check will import, and any requirement of a carried package that this machine's own
# packages do not meet (a likely cause if a part then fails at import)
import importlib.metadata as md
import sys
from pathlib import Path

names = ["torch", "torchvision", "numpy", "ray", "optuna", "mlflow", "opacus", "pydantic"]
found = []
for name in names:
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} MISSING")
print("packages: " + ", ".join(found))
manifest = Path(sys.argv[1])
if manifest.exists():
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "extra": ""}
    for line in manifest.read_text().splitlines()[1:]:
        for text in md.requires(line.split("==")[0]) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                print(f"warning: {line} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                print(f"warning: {line} needs {req}, this machine has {have}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
exec "$python" bench/gpu_check.py "$@"
