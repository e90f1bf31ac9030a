#!/usr/bin/env bash
# Build what `bench/gpu_session.sh triton` carries to the GPU machine (Python 3.12, numpy 2, no PyTriton) within the
# 64 MiB that travels with the working tree:
#   OUT/tsite.tar.xz  nvidia-pytriton 0.7.0 and numpy 1.26.4 for cp312 (PyTriton garbles tensors under numpy 2),
#                     trimmed of what the server never loads, xz-compressed (51 MB)
#   OUT/*.whl         the HTTP server's wheels (fastapi, uvicorn, pydantic, ...), copied from WHEELS
# Usage: bench/triton_carry.sh OUT WHEELS
set -euo pipefail
OUT=${1:?out dir}; WHEELS=${2:?wheels dir (the set of the serve stages)}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); WHEELS=$(cd "$WHEELS" && pwd)
SITE=$(mktemp -d)/tsite
pip install -q --target "$SITE" --python-version 3.12 --implementation cp --only-binary=:all: \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 nvidia-pytriton==0.7.0 numpy==1.26.4
cd "$SITE"
# Only the 3.12 python-backend stub is used; libpython3.13 serves only the 3.13 stub; rich/pygments only pretty-print
# PyTriton's CLI; pydantic, aiohttp and their helpers come with the server wheels (same versions).
rm -rf nvidia_pytriton.libs/libpython3-*.13.so* bin rich* pygments* markdown_it* mdurl* \
    pydantic pydantic-2* pydantic_core pydantic_core-* typing_extensions* annotated_types* typing_inspection* \
    aiohttp* yarl* multidict* frozenlist* propcache* aiosignal* aiohappyeyeballs* attrs* attr
for v in pytriton/tritonserver/python_backend_stubs/*; do [ "${v##*/}" = 3.12 ] || rm -rf "$v"; done
find . -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf numpy/*/tests numpy/tests
# Outside site-packages PyTriton takes itself for an editable install and looks for its libraries here.
ln -sfn ../../nvidia_pytriton.libs pytriton/tritonserver/external_libs
tar cf - -C "$(dirname "$SITE")" tsite | xz -T0 -6 > "$OUT/tsite.tar.xz"
cp "$WHEELS"/*.whl "$OUT/" && rm -f "$OUT"/py_spy-*.whl
rm -rf "$(dirname "$SITE")"
du -ch "$OUT"/* | tail -n 1
