#!/usr/bin/env bash
# Download the `serve` dependencies as wheels for the image's Python, so that `docker build` installs
# them offline (the Dockerfile's build stage runs `pip install --no-index --find-links`).
#
#   docker/wheels.sh [--cuda] [--python X.Y] [DIR]
#
# DIR (default .whl, or .whl-cuda with --cuda) receives the wheels and a requirements.txt: the
# `serve` extra of pyproject.toml, pinned to the versions installed in .venv when it exists (the
# versions the test suite ran against). --cuda swaps onnxruntime for onnxruntime-gpu and targets
# Python 3.12 (Ubuntu 24.04, the base of the CUDA runtime images) unless --python says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=0
python_version=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cuda) cuda=1; shift ;;
        --python) python_version="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        -*) echo "wheels.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $cuda == 1 ]]; then
    dest="${1:-.whl-cuda}"; python_version="${python_version:-3.12}"
else
    dest="${1:-.whl}"; python_version="${python_version:-3.11}"
fi
py="${PYTHON:-.venv/bin/python}"
[[ -x "$py" ]] || py=python3

mkdir -p "$dest"
# The requirement list comes from pyproject.toml, so the image cannot drift from the `serve` extra.
"$py" - "$cuda" > "$dest/requirements.txt" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as handle:
    serve = tomllib.load(handle)["project"]["optional-dependencies"]["serve"]
if sys.argv[1] == "1":
    serve = [r.replace("onnxruntime", "onnxruntime-gpu", 1) if r.startswith("onnxruntime") else r
             for r in serve]
print("\n".join(serve))
PY
# Pins: what the test suite ran against. onnxruntime-gpu is released later than onnxruntime, so
# the CUDA variant takes its newest release instead of a pin.
"$py" -m pip freeze --exclude-editable 2>/dev/null | grep '==' > "$dest/constraints.txt" || true

# --only-binary with an explicit target Python: the wheels fit the image's interpreter, not the
# host's. pip matches --platform tags literally, so every manylinux level up to glibc 2.28 is listed
# (Debian bookworm has glibc 2.36, Ubuntu 24.04 2.39).
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$python_version" "${platforms[@]}" \
    --dest "$dest" -r "$dest/requirements.txt" -c "$dest/constraints.txt"
echo "wheels.sh: $(find "$dest" -name '*.whl' | wc -l) wheels for Python $python_version in $dest"
