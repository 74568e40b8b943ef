#!/usr/bin/env bash
# Does OHEM's lead over random sampling survive longer runs and equal GPU time? (docs/BENCHMARKS.md,
# "Does the lead survive?"). On one GPU machine, in parts, each an `ohem bench` folder under OUT that
# writes a row per finished run, so a later call of this script resumes where the last one stopped:
#
#   bash benchmarks/gpu_schedules.sh OUT [SECONDS] [PARTS]
#
# SECONDS bounds the whole call (default 540: a device call's 600 s less the start-up); PARTS picks
# parts (default "dense dense-time r50 r50-time"), in that order:
#   dense       dense-2000 transferred: tv-default, ohem; 3 seeds; 1x 2x 4x the 1500 iterations; equal
#               iterations; the cost phase times each arm alone on the GPU (s/iter, FLOPs per step)
#   dense-time  the same at equal GPU time: --budget seconds, tv-default's measured time for 1500
#               iterations, times each schedule
#   r50         ResNet-50 FPN at 800 px transferred (bench_r50_transfer): tv-default, ohem; 2 seeds; 1x 2x
#   r50-time    the same at equal GPU time
# The source tasks are trained once per part folder (--pretrain); the -time parts copy theirs.
# Collect: OUT/*/summary.md, accuracy.csv, curves.csv, cost.csv, bench.json.
# A dry run on the CPU (tiny runs; each folder needs its pretrain/ made first, e.g. by a 2-iteration
# `ohem train --config transfer_source_r50`):  DEVICE=cpu EXTRA="--set solver.iterations=4 ..." bash ...
set -u
out=$1; seconds=${2:-540}; parts=${3:-dense dense-time r50 r50-time}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
deadline=$(( $(date +%s) + seconds ))
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
mkdir -p runs/dense "$out"
for split in train test; do
    [ -f runs/dense/p20j15-$split.npz ] || python3 -m ohem proposals --data synthetic --split $split --method dense \
        --out runs/dense/p20j15-$split.npz &
done
wait
gpu=(--set train.device=${DEVICE:-cuda} --set data.workers=0 --no-errors ${EXTRA:-})
bench() {  # bench FOLDER ARGS...: one part, stopped at the deadline (its finished rows are kept)
    local left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 30 ] || { echo "no time left for $1"; return; }
    echo "== $1 ($left s left)"
    timeout "$left" python3 -m ohem bench --out "$out/$1" "${@:2}" "${gpu[@]}"
    echo "== $1: exit $?"
}
copy_pretrain() {  # the source weights of one folder into another (not trained twice)
    [ -f "$out/$1/pretrain/metrics.json" ] && mkdir -p "$out/$2/pretrain" && cp -rn "$out/$1/pretrain/." "$out/$2/pretrain/"
}
for part in $parts; do
    case $part in
        dense) bench dense --config bench_dense_transfer --pretrain transfer_source --arms tv-default,ohem \
            --seeds 0 1 2 --schedules 1 2 4 --jobs 15 ;;
        dense-time) copy_pretrain dense dense-time
            bench dense-time --config bench_dense_transfer --pretrain transfer_source --arms tv-default,ohem \
            --seeds 0 1 2 --schedules 1 2 4 --jobs 15 --budget seconds ;;
        r50) bench r50 --config bench_r50_transfer --pretrain transfer_source_r50 --arms tv-default,ohem \
            --seeds 0 1 --schedules 1 2 --jobs 4 ;;
        r50-time) copy_pretrain r50 r50-time
            bench r50-time --config bench_r50_transfer --pretrain transfer_source_r50 --arms tv-default,ohem \
            --seeds 0 1 --schedules 1 2 --jobs 4 --budget seconds ;;
        *) echo "unknown part $part" ;;
    esac
done
