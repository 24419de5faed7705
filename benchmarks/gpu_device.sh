#!/usr/bin/env bash
# There, on the lent GPU machine, in the repository root (benchmarks/GPU.md). Steps run in the order given;
# one device call runs several, e.g. `bash benchmarks/gpu_device.sh part 0 setup tests`:
#   part N        append .ortgpu/part-0N to /tmp/ort.whl (part 0 starts it); the pieces come one per call
#   setup         install .whl/ into /tmp/site, and onnxruntime-gpu once the joined wheel checks out
#   tests         pytest tests/test_cuda.py
#   bench ARCH    tmdeploy bench --device cuda, batch 1, 32 and 256, every backend but max-autotune (below)
#   check ARCH    tmdeploy check --device cuda of FP32 and FP16 exports on the digits test split
#   optimize ARCH tmdeploy optimize --device cuda (status.json, report.md, latency.png, model.onnx; not the
#                 candidates' files, which would outgrow what a call returns)
#   tm-cost       benchmarks/gpu_tm_cost.py --profile (rn26-tm ÷ rn26 per configuration)
# Results go to /tmp/gpu and, at the end, into one archive under $OUT (a call returns at most 8 files).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
ORT=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
RESULTS=/tmp/gpu; mkdir -p $RESULTS
# torch.compile max-autotune-no-cudagraphs is left out by default: on the first lease (torch 2.11, H100) inductor
# spent 15-20 s autotuning each convolution and matrix product, over 7 minutes for rn26 at batch 1 alone, so
# one model did not fit a 10-minute call. BENCH_BACKENDS=... overrides the list.
BENCH_BACKENDS=${BENCH_BACKENDS:-pytorch,torch-compile,torch-compile-reduce-overhead,pytorch-cuda-graph,ort-fp32,ort-fp16,ort-fp32-cuda-graph,ort-fp16-cuda-graph,ort-int8,ort-int8-trt,trt-fp32,trt-fp16,trt-int8}
log() { echo "== $(date +%T) $*"; }
# each Python step ends within STEP_LIMIT seconds, so the archive is written inside the call's 10 minutes
limited() { timeout --kill-after=5 "${STEP_LIMIT:-500}" "$@"; }
trap 'tar czf "${OUT:-/tmp}/gpu-$(date +%H%M%S).tgz" -C $RESULTS . 2>/dev/null' EXIT
while [ $# -gt 0 ]; do
    step=$1; shift
    case $step in
    part)
        n=$1; shift; log "part $n"
        if [ "$n" = 0 ]; then cat .ortgpu/part-00 > /tmp/ort.whl; else cat .ortgpu/part-0$n >> /tmp/ort.whl; fi
        ls -l /tmp/ort.whl ;;
    setup)
        log setup; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        if [ ! -d /tmp/site/onnxruntime ] && [ -f /tmp/ort.whl ] &&
           [ "$(sha256sum < /tmp/ort.whl | cut -d' ' -f1)" = "$(cut -d' ' -f1 .ortgpu/SHA256)" ]; then
            cp /tmp/ort.whl /tmp/$ORT
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/$ORT
        fi
        python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" ;;
    tests)
        log tests; limited python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee $RESULTS/tests.log ;;
    bench)
        arch=$1; shift; log "bench $arch"
        limited python3 -m tmdeploy bench runs/$arch.pt --device cuda --min-time 1 --quiet --backends $BENCH_BACKENDS --report-dir $RESULTS/bench-$arch \
            2>&1 | tee $RESULTS/bench-$arch.log | tail -60 ;;
    check)
        arch=$1; shift; log "check $arch"
        for precision in fp32 fp16; do
            python3 -m tmdeploy export runs/$arch.pt --precision $precision --out $RESULTS/$arch-$precision.onnx &&
            limited python3 -m tmdeploy check runs/$arch.pt $RESULTS/$arch-$precision.onnx --device cuda --data digits \
                --batch 64 --iterations 5 --report-dir $RESULTS 2>&1 | tee -a $RESULTS/check-$arch.log
        done; rm -f $RESULTS/*.onnx ;;
    optimize)
        arch=$1; shift; log "optimize $arch"
        limited python3 -m tmdeploy optimize runs/$arch.pt --device cuda --quiet --out $RESULTS/optimize-$arch \
            2>&1 | tee $RESULTS/optimize-$arch.log | tail -40
        rm -rf $RESULTS/optimize-$arch/candidates ;;
    tm-cost)
        log tm-cost
        limited python3 benchmarks/gpu_tm_cost.py runs/rn26.pt runs/rn26-tm.pt --profile --json $RESULTS/tm-cost.json \
            2>&1 | tee $RESULTS/tm-cost.log ;;
    *) echo "unknown step '$step'"; exit 2 ;;
    esac
done
log done
