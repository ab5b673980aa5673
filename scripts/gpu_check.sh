#!/usr/bin/env bash
# One command for the GPU host: build the CUDA backend, run the GPU tests,
# run the benchmarks (srgpt and the PyTorch reference).
#
#   scripts/gpu_check.sh [all|build|test|bench|pytorch]...   (default: all)
#
# Stages can be run one per call (the build directory, build-gpu, is kept
# between them). Logs go to $OUT when it is set (the device tool collects
# that folder), else to build-gpu/logs. Environment:
#   JOBS         parallel build jobs (default: nproc)
#   BENCH_ARGS   extra arguments for gpu_step_bench (e.g. "--model d12")
#   PYTORCH_ARGS extra arguments for scripts/bench_pytorch_gpt2.py
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
BUILD=build-gpu
LOGS="${OUT:-$BUILD/logs}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$LOGS"
status=0

stage_build() {
  nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1 || true
  {
    cmake -S . -B "$BUILD" -DSRGPT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$BUILD" -j"$JOBS" --target srgpt srgpt_gpu_tests gpu_step_bench
  } >"$LOGS/build.log" 2>&1
  local rc=$?
  tail -n 5 "$LOGS/build.log"
  echo "build: exit $rc (log $LOGS/build.log)"
  return $rc
}

stage_test() {
  export SRGPT_REQUIRE_GPU=1
  # The test binary run directly prints each op's measured error vs the cpu
  # backend; ctest gives the per-test pass/fail summary.
  "$BUILD/tests/gpu/srgpt_gpu_tests" >"$LOGS/gpu-tests.log" 2>&1
  local rc=$?
  grep -nE "FAILED|NON-FINITE" "$LOGS/gpu-tests.log" | head -n 30
  tail -n 4 "$LOGS/gpu-tests.log"
  (cd "$BUILD" && ctest -L gpu --output-on-failure -j4) >"$LOGS/ctest-gpu.log" 2>&1
  local ctest_rc=$?
  tail -n 25 "$LOGS/ctest-gpu.log"
  echo "test: srgpt_gpu_tests exit $rc, ctest -L gpu exit $ctest_rc (logs $LOGS/gpu-tests.log, $LOGS/ctest-gpu.log)"
  [ $rc -eq 0 ] && [ $ctest_rc -eq 0 ]
}

stage_bench() {
  if [ ! -x "$BUILD/gpu_step_bench" ] && [ ! -x "$BUILD/benchmarks/gpu_step_bench" ]; then
    echo "bench: gpu_step_bench was not built (see the build stage)"
    return 1
  fi
  local bin="$BUILD/benchmarks/gpu_step_bench"
  [ -x "$bin" ] || bin="$BUILD/gpu_step_bench"
  # shellcheck disable=SC2086
  "$bin" ${BENCH_ARGS:-} >"$LOGS/bench.log" 2>&1
  local rc=$?
  tail -n 45 "$LOGS/bench.log"
  echo "bench: exit $rc (log $LOGS/bench.log)"
  return $rc
}

stage_pytorch() {
  # shellcheck disable=SC2086
  python3 scripts/bench_pytorch_gpt2.py --json "$LOGS/pytorch.jsonl" ${PYTORCH_ARGS:-} >"$LOGS/pytorch.log" 2>&1
  local rc=$?
  tail -n 12 "$LOGS/pytorch.log"
  echo "pytorch: exit $rc (log $LOGS/pytorch.log)"
  return $rc
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
for stage in "${stages[@]}"; do
  case "$stage" in
    all)
      stage_build || exit 1
      stage_test || status=1
      stage_bench || status=1
      stage_pytorch || status=1
      ;;
    build) stage_build || exit 1 ;;
    test) stage_test || status=1 ;;
    bench) stage_bench || status=1 ;;
    pytorch) stage_pytorch || status=1 ;;
    *)
      echo "unknown stage '$stage' (allowed: all, build, test, bench, pytorch)" >&2
      exit 2
      ;;
  esac
done
exit $status
