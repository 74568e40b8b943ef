#!/usr/bin/env bash
# The dense-2000 transfer regime on one GPU machine: every sampler arm x 3 seeds at equal iterations,
# 15 runs at a time (one CPU thread each: the data synthesis, not the GPU, bounds the throughput).
#
#   bash benchmarks/gpu_transfer_dense.sh PRETRAIN_DIR BENCH_DIR [SECONDS] [COPY_TO]
#
# PRETRAIN_DIR: a finished `ohem bench --pretrain transfer_source` folder (OUT/pretrain) made elsewhere,
# copied into BENCH_DIR/pretrain so the GPU does not train the source again; empty: the bench trains it.
# SECONDS bounds the bench (default 520): it writes a row per finished run, and a rerun resumes.
# COPY_TO receives accuracy.csv, curves.csv, summary.md, bench.json and the logs (tar) at the end.
set -u
pretrain=${1:-}; out=$2; seconds=${3:-520}; copy_to=${4:-}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
mkdir -p runs/dense "$out"
if [ -n "$pretrain" ]; then mkdir -p "$out/pretrain" && cp "$pretrain"/* "$out/pretrain/"; fi
for split in train test; do
    [ -f runs/dense/p20j15-$split.npz ] || python3 -m ohem proposals --data synthetic --split $split --method dense \
        --out runs/dense/p20j15-$split.npz &
done
wait
arms=heuristic,tv-default,ohem,ohem-warm,libra,pisa,ohem-presample,ohem-stratified,is-mix,ohem-prior
timeout "$seconds" python3 -m ohem bench --config bench_dense_transfer --pretrain transfer_source --arms $arms \
    --seeds 0 1 2 --jobs 15 --cost-iters 0 --no-errors --set train.device=cuda --set data.workers=0 --out "$out"
echo "bench exit $?"
if [ -n "$copy_to" ]; then
    for f in accuracy.csv curves.csv summary.md bench.json; do [ -f "$out/$f" ] && cp "$out/$f" "$copy_to/"; done
    tar czf "$copy_to/logs.tgz" -C "$out" logs
fi
