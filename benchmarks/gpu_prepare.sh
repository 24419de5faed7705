#!/usr/bin/env bash
# Here, before a GPU lease (benchmarks/GPU.md): everything the lent machine lacks, in git-ignored folders
# that the device tool carries. Run from the repository root with the project's environment active.
#   .whl/     polygraphy, onnx-graphsurgeon, onnxconverter-common, onnx-ir (pure Python, < 1 MB)
#   .ortgpu/  onnxruntime-gpu (the CUDA 13 build, 256 MB) in five pieces of ~51 MB: one call carries at
#             most 64 MiB, working tree and checkpoints included; SHA256 to check the joined wheel
#   runs/     rn26, rn26-tm and rn26-cls trained on digits with the default recipe (tmdeploy train)
set -euo pipefail
PY=${PYTHON:-python}
ORT=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.ortgpu/\n' >> .git/info/exclude
P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
   --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
rm -rf .whl .ortgpu && mkdir -p .whl .ortgpu runs
$PY -m pip download -q $P -d .whl polygraphy==0.53.6 onnx-graphsurgeon==0.6.1 onnxconverter-common==1.16.0 \
    onnx-ir==1.1.0
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
$PY -m pip download -q $P -d "$tmp" onnxruntime-gpu==1.31.1
(cd "$tmp" && sha256sum "$ORT") > .ortgpu/SHA256
split -n 5 -d "$tmp/$ORT" .ortgpu/part-
for arch in rn26 rn26-tm rn26-cls; do
    [ -f runs/$arch.pt ] || $PY -m tmdeploy train --arch $arch --out runs/$arch.pt
done
du -ch .whl .ortgpu/part-00 runs/*.pt | tail -1   # what one call carries besides the working tree
