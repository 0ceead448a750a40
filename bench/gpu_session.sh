#!/usr/bin/env bash
# Every GPU figure the docs wait for, in one device call, most wanted first, each under a time cap.
#
# Prepare on the development machine (the GPU image lacks fastai, captum, albumentations; the
# shared data does not travel):
#   ../shared/device/wheelhouse.sh .venv && mkdir -p .data && cp -r ../shared/data/herlev .data/
# Then run it through the device tool, carrying .whl and .data:
#   bash bench/gpu_session.sh [STEP ...]      (default: throughput optimizer overhead e2e ig)
# Steps: throughput (bench/train_throughput.py at batch 64 and 32), optimizer
# (bench/optimizer_step.py), overhead (bench/epoch_overhead.py, resnet101 at 224 px), e2e
# (bench/reproduce_vs_plain.py, cls on 4 folds, 30 epochs: herlev against a plain loop), ig
# (bench/ig.py), pipeline (bench/data_pipeline.py, 8 workers), reproduce (the issue's
# from-scratch table: resnet101, 224 px, 30 epochs, batch 32, last epoch), sweep (cls / cls_reg at
# several lambdas, same protocol), recipe (herlev train's default recipe at the paper's size: resnet101d, cls,
# cells augmentation, 60 epochs; beside it, at the same time on the same folds, cls with the poster's recipe).
# Caps (seconds) can be changed with CAP_<STEP>=N; the default steps' caps (120 + 20 + 60 + 260 + 90 s)
# plus the wheel install fit one device call (600 s at most: run it with timeout_s=600).
# Figures and logs go to $OUT (default
# bench/out); the reproduction's run folders (weights: 170 MB each) stay in .data/runs, only
# their tables and figures are copied to $OUT. A step that runs past its cap leaves its log, and
# a rerun of reproduce / sweep on the same warm machine resumes them.
#
# Dry run on the development machine (every step, tiny model, one epoch, the CPU, a few minutes):
#   DRY=1 PY=.venv/bin/python DATA=../shared/data/herlev/letterbox200 bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-bench/out}
DATA=${DATA:-.data/herlev/letterbox200}
PY=${PY:-python3}
if [ -n "${DRY:-}" ]; then  # the same steps, small: checks the script, not the speed
  DEVICE=cpu ARCH=test_resnet ARCH_D=test_resnet SIZE=32 EPOCHS=1 IMAGES=4
else  # ARCH: the paper's network; ARCH_D: herlev train's default, its ResNet-D variant
  DEVICE=cuda ARCH=resnet101 ARCH_D=resnet101d SIZE=224 EPOCHS=30 IMAGES=32
fi
mkdir -p "$OUT" .site .data/runs
if [ -d .whl ] && [ -z "${DRY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl || exit 1
fi
ln -sfn "$PWD/cli" .site/herlev_cli  # the cli/ folder is the herlev_cli package (pyproject's package-dir)
export PYTHONPATH=$PWD/.site:$PWD
[ -d "$DATA" ] || { echo "error: no data at $DATA (copy ../shared/data/herlev to .data/ and carry .data)"; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  nproc; $PY -c "import torch, timm, fastai; print('torch', torch.__version__, 'timm', timm.__version__, 'fastai', fastai.__version__)"
} > "$OUT/machine.txt" 2>&1

step() {  # step NAME DEFAULT_CAP COMMAND...: run under its cap, log to $OUT/NAME.log, one summary line
  local name=$1 cap_var="CAP_${1^^}" cap=$2
  shift 2
  local start=$SECONDS
  timeout "${!cap_var:-$cap}" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

copy_tables() {  # copy_tables RUN_ROOT DEST: the small files of a reproduction, never the weights
  local dest
  mkdir -p "$2" && dest=$(cd "$2" && pwd)
  [ -d "$1" ] || return 0
  (cd "$1" && find . -maxdepth 2 \( -name '*.md' -o -name '*.csv' -o -name '*.png' -o -name '*.json' \) \
    -not -path '*/fold*' -exec cp --parents {} "$dest" \;
   # each finished fold run's metrics and epoch log: what a reproduction cut off by its cap has
   find . -maxdepth 4 -path '*/fold*' \( -name metrics.json -o -name log.csv \) -exec cp --parents {} "$dest" \;)
}

for s in "${@:-throughput optimizer overhead e2e ig}"; do for name in $s; do
  case $name in
    throughput) step throughput 120 bash -c "$PY bench/train_throughput.py --device $DEVICE --data $DATA --arch $ARCH \
                   --size $SIZE --bs 64 && $PY bench/train_throughput.py --device $DEVICE --data $DATA --arch $ARCH \
                   --size $SIZE --bs 32" ;;
    optimizer) step optimizer 20 $PY bench/optimizer_step.py --device $DEVICE --arch $ARCH ;;
    overhead) step overhead 60 $PY bench/epoch_overhead.py --device $DEVICE --data "$DATA" --arch $ARCH --size $SIZE \
                --epochs $((EPOCHS < 5 ? EPOCHS : 5)) ;;
    e2e) step e2e 260 $PY bench/reproduce_vs_plain.py --device $DEVICE --data "$DATA" --arch $ARCH --size $SIZE \
           --epochs $EPOCHS --heads cls ;;
    ig) step ig 90 $PY bench/ig.py --device $DEVICE --arch $ARCH --size $SIZE --images $IMAGES --repeats 2 \
          --json "$OUT/ig.json" ;;
    pipeline) step pipeline 45 $PY bench/data_pipeline.py --data "$DATA" --device $DEVICE --size $SIZE ;;
    reproduce)
      step reproduce 270 $PY -m herlev_cli.main reproduce --data "$DATA" --arch $ARCH --no-pretrained \
        --size $SIZE --epochs $EPOCHS --bs 32 --keep last --device $DEVICE --out .data/runs/reproduce --quiet
      copy_tables .data/runs/reproduce "$OUT" ;;
    sweep)
      step sweep 540 $PY bench/constraint_sweep.py --data "$DATA" --arch $ARCH --size $SIZE --epochs $EPOCHS \
        --weights-lambda 0.1,0.3,1 --device $DEVICE --out .data/runs/sweep
      copy_tables .data/runs/sweep "$OUT" ;;
    recipe)  # the default recipe (resnet101d, cls, cells augmentation, 60 epochs, last epoch) and the poster's
             # (resnet101, 30 epochs, poster augmentation), cls on the same folds, at once on the one card
      timeout "${CAP_RECIPE:-400}" $PY -m herlev_cli.main reproduce --data "$DATA" --arch $ARCH --no-pretrained \
        --size $SIZE --epochs $EPOCHS --policy poster --heads cls --bs 32 --keep last --device $DEVICE \
        --out .data/runs/recipe_poster --quiet > "$OUT/recipe_poster.log" 2>&1 &
      step recipe 400 $PY -m herlev_cli.main reproduce --data "$DATA" --arch $ARCH_D --no-pretrained --size $SIZE \
        --epochs $((EPOCHS * 2)) --policy cells --heads cls --bs 32 --keep last --device $DEVICE \
        --out .data/runs/recipe --quiet
      wait
      copy_tables .data/runs/recipe "$OUT/recipe"
      copy_tables .data/runs/recipe_poster "$OUT/recipe_poster" ;;
    *) echo "unknown step '$name': throughput optimizer overhead e2e ig pipeline reproduce sweep recipe"; exit 2 ;;
  esac
done; done
cat "$OUT/summary.txt"
