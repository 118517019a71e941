#!/usr/bin/env bash
# The wheels the GPU image lacks for archlab's reproduce with MLflow (issue #17), into the
# git-ignored .gpu/wheels: MLflow (pinned to this venv's version) and what it needs at run time
# beyond what that image already holds (torch, pandas, pyarrow, numpy, click, flask's werkzeug and
# jinja2, requests, protobuf, pyyaml, psutil, anyio, h11, aiohttp, ...: /work/.library/device/KINDS.md).
#   here:  bash bench/gpu_wheels.sh            # download (cp312, manylinux x86_64), print the list and total size
#          bash bench/gpu_wheels.sh closure    # re-derive the set: mlflow's Requires-Dist closure less the image's
# The set is that closure (44 packages with mlflow 3.17.2) less what archlab's reproduce never
# imports, found by running it (tests/test_reproduce.py's tiny programme and its --workers 2 private
# `mlflow server` over sqlite) in a Python that has only the image's packages plus these wheels:
#   docker                          `mlflow models build-docker`, the docker project backend
#   skops, prettytable, wcwidth     the sklearn flavour's skops format
#   huey                            MLflow 3's job runner, which training.tracking.server turns off
#   gunicorn                        `mlflow server` runs uvicorn
#   google-auth, pyasn1(-modules)   databricks-sdk's Google credentials (Databricks auth only)
# What stays, though it looks optional: databricks-sdk (mlflow.genai looks up `databricks.agents` at
# import), cryptography + cffi + pycparser (the sqlite store imports mlflow.utils.crypto). One the image
# has rides along too: typing-extensions, since pydantic 2.14 needs >= 4.16.0, newer than the image may
# hold (on PYTHONPATH it shadows the image's copy; later versions only add).
# 36 wheels, 34.1 MB (32.5 MiB): too much to ride with a 45.6 MiB third of the data in one 64 MiB
# call, so the reproduce flow splits the data in five (bash bench/gpu_stage.sh plan prints the calls):
#   call 1: data part 0 + the unpacker + checksums + the wheels  (~61 MiB with the repo) -> install to /tmp/site
#   call 2: data parts 1 and 2                                   (~56 MiB)
#   call 3: data parts 3 and 4                                   (~56 MiB) -> unpack, reproduce, record
# There: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#        --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site  (gpu_stage.sh does it).
set -euo pipefail
cmd=${1:-download}
DEST=${WHEEL_DIR:-.gpu/wheels}           # git-ignored (.gpu/)
VENV_PY=${PYTHON:-.venv/bin/python}      # the versions: this venv's, where the tests ran
PYVER=${PY_VERSION:-3.12}                # the image's python3
NAMES="mlflow mlflow-skinny mlflow-tracing alembic mako sqlalchemy flask flask-cors itsdangerous blinker
graphene graphql-core graphql-relay fastapi starlette uvicorn pydantic pydantic-core annotated-types
typing-inspection opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
databricks-sdk cachetools gitpython gitdb smmap importlib-metadata python-dotenv sqlparse cryptography cffi pycparser
typing-extensions"
# Packages the image has (a subset of KINDS.md's list: those mlflow's closure reaches).
IMAGE_HAS="aiohttp anyio click cloudpickle h11 jinja2 markupsafe matplotlib numpy packaging pandas protobuf psutil
pyarrow python-dateutil pyyaml requests scikit-learn scipy typing-extensions urllib3 werkzeug zipp annotated-doc
certifi charset-normalizer idna six"  # (typing-extensions is carried anyway, above)

pins() {  # NAME==VERSION of each wheel, from this venv
  "$VENV_PY" - $NAMES <<'EOF'
import sys, importlib.metadata as md
for name in sys.argv[1:]:
    print(f"{name}=={md.version(name)}")
EOF
}

download() {  # the exact set, for the image's Python, one version of each (old wheels removed)
  mkdir -p "$DEST"; rm -f "$DEST"/*.whl
  # shellcheck disable=SC2046
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" $(pins) 2>&1 | grep -v "is ignored" || true
  local n; n=$(ls "$DEST"/*.whl | wc -l)
  [ "$n" -eq "$(echo $NAMES | wc -w)" ] || { echo "expected $(echo $NAMES | wc -w) wheels, got $n"; exit 1; }
  ls -l "$DEST" | awk 'NR > 1 {printf "%10d  %s\n", $5, $9}'
  du -cb "$DEST"/*.whl | awk 'END {printf "%d wheels, %d bytes (%.1f MiB) in '"$DEST"'\n", '"$n"', $1, $1 / 1048576}'
}

closure() {  # mlflow's Requires-Dist closure (no extras, python $PYVER on Linux) less IMAGE_HAS
  "$VENV_PY" - "$PYVER" $IMAGE_HAS <<'EOF'
import re, sys, importlib.metadata as md
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pyver, has = sys.argv[1], {norm(n) for n in sys.argv[2:]}
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux", "extra": "",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
seen, todo = {}, ["mlflow"]
while todo:
    name = todo.pop()
    if name in seen:
        continue
    dist = md.distribution(name)
    seen[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if (req.marker is None or req.marker.evaluate(env)) and norm(req.name) not in has:
            todo.append(norm(req.name))
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
EOF
}

case "$cmd" in
  download) download;;
  closure) closure;;
  pins) pins;;
  *) echo "usage: gpu_wheels.sh [download | closure | pins]"; exit 2;;
esac
