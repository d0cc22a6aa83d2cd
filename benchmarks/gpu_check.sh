#!/usr/bin/env bash
# Everything fa_cute needs checked on a GPU machine, in one call (the machine needs no
# network): build and install from this checkout, report registers/stack/spills of every
# kernel, print the GPU and the build, time the default kernel once from C++ (fwd_bench),
# run the tests, run compute-sanitizer's memcheck, racecheck and synccheck on small cases,
# then benchmark (its tables are printed last).
#
#   bash benchmarks/gpu_check.sh
#
# Environment:
#   FA_CUTE_WHEEL_DIR         folder holding nvidia_cutlass-*.whl, and hypothesis-*.whl with
#                             sortedcontainers-*.whl for the tests (default: .whl in the repo)
#   OUT                       folder for logs and bench*.json (default: /tmp/fa_cute_check)
#   FA_CUTE_PIP_ARGS          extra arguments for the build's pip install, e.g.
#                             "-Ccmake.define.FA_CUTE_ARCHS=80;90a" (default: the GPU
#                             present, 90a on an H100) or "-Ccmake.define.FA_CUTE_LADDER=ON"
#   FA_CUTE_SKIP_BUILD=1      use the fa_cute already installed
#   FA_CUTE_SKIP_TESTS=1      skip pytest
#   FA_CUTE_SKIP_SANITIZERS=1 skip compute-sanitizer
#   FA_CUTE_SANITIZERS        which compute-sanitizer tools (default: memcheck racecheck
#                             synccheck); with every config built, racecheck alone takes
#                             minutes, so a call with a time limit may split them
#   FA_CUTE_SANITIZE_CONFIGS  a regex of the configs the sanitizers run (sanitize_case.py's
#                             argument), e.g. bwd_ for the backward's; default every one
#   FA_CUTE_SKIP_BENCH=1      skip the benchmark
#   FA_CUTE_BENCH_SET         which benchmark tables (bf16 and fp16 each):
#                             standard (default, a few minutes on an H100): d=64, 128 and
#                               256, non-causal and causal, then a decode table at d=128;
#                             quick: d=128 non-causal only;
#                             backward: the backward at d=64 and 128, non-causal and causal,
#                               then its deterministic mode (docs/perf-notes.md, Backward);
#                             fp8: benchmarks/fp8_speed.py at d=64, 128 and 256, N = 1k, 4k
#                               and 16k (docs/perf-notes.md, FP8 forward)
#   FA_CUTE_BENCH_ARGS        extra arguments for every python3 -m fa_cute.bench run
#   FA_CUTE_FA4_SITE          site dir holding FlashAttention-4, passed to every bench run
#                             as --fa4-site (an FA4 column next to FLASH and CUDNN); e.g.
#                             /tmp/fa4site after `bash ../shared/tools/fa4-wheels.sh stash
#                             DIR` (each half) and `... install`. Unset: FA4 only if
#                             flash_attn.cute imports anyway
#
# A failing build stops the script; any other failing step is reported, the remaining
# steps still run, and the exit status is 1.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WHEEL_DIR=${FA_CUTE_WHEEL_DIR:-.whl}
LOGS=${OUT:-/tmp/fa_cute_check}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=()

step() { echo; echo "=== [$((SECONDS - START)) s] $* ==="; }
skipped() { [[ "${!1:-0}" == 1 ]] && echo "(skipped: $1=1)"; }

if ! skipped FA_CUTE_SKIP_BUILD; then
  step "install the CUTLASS wheel from $WHEEL_DIR (headers for the build)"
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/fa_cute_site \
    "$WHEEL_DIR"/nvidia_cutlass-*.whl
  export PYTHONPATH=/tmp/fa_cute_site${PYTHONPATH:+:$PYTHONPATH}

  step "build and install fa_cute (log: $LOGS/build.log)"
  # shellcheck disable=SC2086  # FA_CUTE_PIP_ARGS is a list of words
  if ! CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install --no-build-isolation \
      --no-deps -v -Cbuild-dir=build/gpu_check -Ccmake.define.FA_CUTE_BUILD_BENCH=ON \
      ${FA_CUTE_PIP_ARGS:-} . >"$LOGS/build.log" 2>&1
  then
    tail -n 80 "$LOGS/build.log"
    echo "BUILD FAILED after $((SECONDS - START)) s; full log: $LOGS/build.log"
    exit 1
  fi
  grep -E "^ *-- fa_cute:" "$LOGS/build.log" || true

  step "ptxas report: registers, stack frame and spills per kernel"
  if ! python3 benchmarks/ptxas_report.py "$LOGS/build.log"
  then
    FAILED+=("spills")
  fi
fi

step "nvidia-smi"
nvidia-smi || FAILED+=("nvidia-smi")

step "python3 -m fa_cute.info"
(cd /tmp && python3 -m fa_cute.info) || FAILED+=("info")

step "C++ benchmark: fwd_bench --list, then the default config at N=4096"
FWD_BENCH=build/gpu_check/benchmarks/cpp/fwd_bench
if [[ -x $FWD_BENCH ]]; then
  { "$FWD_BENCH" --list && "$FWD_BENCH"; } 2>&1 | tee "$LOGS/fwd_bench.log" || FAILED+=("fwd_bench")
else
  echo "no $FWD_BENCH: this script's build makes it (FA_CUTE_BUILD_BENCH=ON)"
  FAILED+=("fwd_bench")
fi

if ! skipped FA_CUTE_SKIP_TESTS; then
  step "install hypothesis from $WHEEL_DIR (the tests that draw random shapes)"
  python3 -m pip install -q --no-index --find-links "$WHEEL_DIR" hypothesis \
    || echo "hypothesis not installed: tests that use it skip or fail to import"

  step "pytest (from /tmp, so the installed fa_cute is the one imported)"
  (cd /tmp && python3 -m pytest -q -rs -p no:cacheprovider "$REPO/tests" 2>&1 \
    | tee "$LOGS/pytest.log") || FAILED+=("pytest")
fi

if ! skipped FA_CUTE_SKIP_SANITIZERS; then
  for tool in ${FA_CUTE_SANITIZERS:-memcheck racecheck synccheck}; do
    step "compute-sanitizer --tool $tool (log: $LOGS/sanitizer_$tool.log)"
    compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
      python3 benchmarks/sanitize_case.py "${FA_CUTE_SANITIZE_CONFIGS:-}" 2>&1 | tee "$LOGS/sanitizer_$tool.log" \
      || FAILED+=("$tool")
  done
fi

bench() {  # bench NAME ARGS...: one benchmark run, its numbers in $LOGS/NAME.json
  local name=$1
  shift
  if [[ -n ${FA_CUTE_FA4_SITE:-} ]]; then
    # on the command line, so the log shows it; absolute, since bench runs from /tmp
    set -- "$@" --fa4-site "$(realpath -m "$FA_CUTE_FA4_SITE")"
  fi
  step "python3 -m fa_cute.bench $* ${FA_CUTE_BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # FA_CUTE_BENCH_ARGS is a list of words
  (cd /tmp && python3 -m fa_cute.bench "$@" --json "$LOGS/$name.json" ${FA_CUTE_BENCH_ARGS:-}) \
    || FAILED+=("$name")
}

if ! skipped FA_CUTE_SKIP_BENCH; then
  case ${FA_CUTE_BENCH_SET:-standard} in
    standard)
      bench bench --dtype bf16,fp16 --headdim 64,128,256 --causal both
      bench bench_decode --decode --dtype bf16,fp16 --headdim 128 ;;
    quick)
      bench bench --dtype bf16,fp16 ;;
    backward)
      bench bench_bwd --bwd --dtype bf16,fp16 --headdim 64,128 --causal both
      bench bench_bwd_det --bwd --deterministic --dtype bf16 --headdim 64,128 --causal both ;;
    fp8)
      step "python3 benchmarks/fp8_speed.py 64,128,256 1024,4096,16384"
      OUT="$LOGS" python3 benchmarks/fp8_speed.py 64,128,256 1024,4096,16384 || FAILED+=("fp8") ;;
    *)
      echo "FA_CUTE_BENCH_SET=${FA_CUTE_BENCH_SET}: expected standard, quick, backward or fp8"
      FAILED+=("bench") ;;
  esac
fi

echo
if ((${#FAILED[@]})); then
  echo "gpu_check: FAILED: ${FAILED[*]} (total $((SECONDS - START)) s; logs in $LOGS)"
  exit 1
fi
echo "gpu_check: all steps passed (total $((SECONDS - START)) s; logs in $LOGS)"
