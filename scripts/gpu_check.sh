#!/usr/bin/env bash
# The GPU check: every GPU-only path once, and the two GPU recipes for a few epochs, in one command
# that fits a short loan of a GPU machine (under 8 minutes).
#
#   scripts/gpu_check.sh pack                  here, once: data/gpu_check/ = wheels + a slice of FER-2013
#   scripts/gpu_check.sh LOG_DIR               on the GPU machine (carry data/gpu_check)
#   GPU_CHECK_CPU=1 scripts/gpu_check.sh LOG_DIR   the same steps on the CPU at a tiny size (< 1 min)
#
# On the GPU machine it uses that machine's own torch, installs the project and the pure-Python
# packages that machine lacks from the carried wheels, runs `pytest -m gpu`, then bench_train and a
# few epochs of experiment=fer2013_best and experiment=gan_gpu on the carried slice, and prints
# images/s, epoch time, PublicTest accuracy so far and peak GPU memory. Everything goes to LOG_DIR
# (summary.txt: the figures; one log per step). GPU_CHECK_DATA names another dataset folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=data/gpu_check
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

if [ "${1:-}" = pack ]; then
  # The packages a GPU machine's image lacks (its torch, Lightning, torchmetrics, OpenCV... are there),
  # as Python 3.12 wheels; antlr4 4.9.3 (omegaconf's parser) exists only as an sdist, so it is built here.
  root=${FER2013_ROOT:-data/fer2013}
  [ -d "$root/train" ] || { echo "error: no FER-2013 Kaggle folders at $root (set FER2013_ROOT)" >&2; exit 1; }
  rm -rf "$PACK" && mkdir -p "$PACK/wheels"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$PACK/wheels" \
    hydra-core==1.3.2 omegaconf==2.3.0 facenet-pytorch==2.5.3
  "$PYTHON" -m pip wheel -q --no-deps -w "$PACK/wheels" antlr4-python3-runtime==4.9.3
  # A slice of the dataset in its own layout: up to 1,000 Training faces a class, all of PublicTest.
  for class_dir in "$root"/train/*/; do
    class=$(basename "$class_dir"); mkdir -p "$PACK/fer2013/train/$class"
    find "$class_dir" -maxdepth 1 -type f | sort | sed -n 1,1000p | xargs cp -t "$PACK/fer2013/train/$class"
  done
  for class_dir in "$root"/test/*/; do
    class=$(basename "$class_dir"); mkdir -p "$PACK/fer2013/test/$class"
    find "$class_dir" -maxdepth 1 -type f -name 'PublicTest_*' | xargs cp -t "$PACK/fer2013/test/$class"
  done
  du -sh "$PACK"
  exit 0
fi

LOG_DIR=${1:?usage: scripts/gpu_check.sh LOG_DIR | pack}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
DATA=${GPU_CHECK_DATA:-$PACK/fer2013}
[ -d "$DATA/train" ] || { echo "error: no dataset slice at $DATA: run scripts/gpu_check.sh pack first (or set GPU_CHECK_DATA)" >&2; exit 1; }
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
summary="$LOG_DIR/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
started=$(date +%s)

# 1. The project on this machine's torch (a machine that already has it, like CI's, installs nothing).
if ! "$PYTHON" -c "import fer.training.train" 2> /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site "$PACK"/wheels/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$LOG_DIR/install.log" 2>&1
fi
say "$("$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, " + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"))')"

# 2. The run settings: the recipes as they are on a GPU; on the CPU, the same steps at a tiny size.
common=("data.root=$DATA" "paths.log_dir=$LOG_DIR/runs" "paths.cache_dir=$LOG_DIR/cache" "trainer.enable_progress_bar=false")
if [ -n "${GPU_CHECK_CPU:-}" ]; then
  say "GPU_CHECK_CPU=1: the CPU at a tiny size (the figures below say nothing of a GPU)"
  cpu=("trainer.accelerator=cpu" "trainer.precision=32-true" "data.on_device=false" "data.batch_size=16")
  classifier=("${cpu[@]}" "trainer.max_epochs=1" "+trainer.limit_train_batches=2" "+trainer.limit_val_batches=1")
  bench=("${cpu[@]}" "bench.warmup=1" "bench.steps=2")
  gan=("${cpu[@]}" "data.align=false" "trainer.max_epochs=1" "+trainer.limit_train_batches=2" "quality.n_per_class=8"
       "quality.kid_subsets=2" "quality.kid_subset_size=4")
else
  classifier=("trainer.max_epochs=3")
  bench=("bench.steps=40")
  gan=("trainer.max_epochs=2")
fi

step() {  # step NAME PATTERN COMMAND...: run it into NAME.log; its lines matching PATTERN go to the summary
  local name=$1 pattern=$2 rc=0
  shift 2
  "$@" > "$LOG_DIR/$name.log" 2>&1 || rc=$?
  grep -E "$pattern" "$LOG_DIR/$name.log" | sed -E "s/^.*\] - //; s/^/$name: /" | tee -a "$summary" || true
  if [ "$rc" != 0 ]; then
    say "$name: FAILED (exit $rc); the end of $LOG_DIR/$name.log:"
    tail -n 25 "$LOG_DIR/$name.log" | tee -a "$summary"
    exit 1
  fi
}

# 3. The tests of the GPU-only paths (they skip without CUDA), then training speed, then a few epochs of
#    each GPU recipe.
step pytest_gpu "[0-9]+ (passed|skipped|failed)" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step bench_train "^device=|^flop" "$PYTHON" scripts/bench_train.py experiment=fer2013_best "${common[@]}" "${bench[@]}"
step fer2013_best "epoch [0-9]+/[0-9]+ done|measured over|PublicTest \(val\) of the best" \
  "$PYTHON" scripts/train.py experiment=fer2013_best "${common[@]}" "${classifier[@]}"
step gan_gpu "epoch [0-9]+/[0-9]+ done|measured over|quality.json" "$PYTHON" scripts/train_gan.py experiment=gan_gpu "${common[@]}" "${gan[@]}"
say "gpu_check: done in $(( $(date +%s) - started )) s; logs in $LOG_DIR"
