#!/usr/bin/env bash
# Build and install fa_cute's Python package from a source tarball into a folder of its own
# (pip --target), for same-process-kind A/Bs on the GPU machine (no git there): time a
# baseline revision and this checkout side by side, each run with PYTHONPATH=<its site>.
#
#   Here:   git archive REV | gzip > .ab/base.tgz     (.ab/ is in .git/info/exclude)
#   There:  bash benchmarks/ab_site_build.sh .ab/base.tgz /tmp/base_site "CFG1;CFG2" &
#           bash benchmarks/ab_site_build.sh - /tmp/new_site "CFG1;CFG2" &   # - : this checkout
#           wait
#           PYTHONPATH=/tmp/base_site python3 benchmarks/bwd_speed.py 128 1024,4096 --det
#           PYTHONPATH=/tmp/new_site  python3 benchmarks/bwd_speed.py 128 1024,4096 --det
#
# Each build uses half the machine's cores (two run at once; FA_CUTE_BUILD_JOBS=N for another
# count, e.g. all of them for a single build), sm_90a, bf16 unless FA_CUTE_DTYPES says
# otherwise; CUTLASS's headers come from the nvidia-cutlass wheel in FA_CUTE_WHEEL_DIR
# (default .whl), installed into /tmp/fa_cute_site. The log is SITE.log; the kernels that
# spill are printed after the build (benchmarks/ptxas_report.py).
set -euo pipefail
src=${1:?source tarball, or - for this checkout}
site=$(realpath -m "${2:?folder to install into}")
[[ "$src" == - ]] || src=$(realpath "$src")
configs=${3:?a ;-list of kernel configs}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/fa_cute_site \
  "${FA_CUTE_WHEEL_DIR:-$repo/.whl}"/nvidia_cutlass-*.whl
if [[ "$src" == - ]]; then
  dir=$repo
else
  dir=$site.src
  mkdir -p "$dir"
  tar -xzf "$src" -C "$dir"
fi
cd "$dir"
jobs=${FA_CUTE_BUILD_JOBS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}
if ! PYTHONPATH=/tmp/fa_cute_site CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
    python3 -m pip install --no-build-isolation --no-deps -v --target "$site" -Cbuild-dir="build/ab-$(basename "$site")" \
    -Ccmake.define.FA_CUTE_ARCHS=90a "-Ccmake.define.FA_CUTE_CONFIGS=$configs" \
    "-Ccmake.define.FA_CUTE_DTYPES=${FA_CUTE_DTYPES:-bf16}" . >"$site.log" 2>&1; then
  tail -n 40 "$site.log"
  echo "BUILD FAILED: $src into $site (log: $site.log)"
  exit 1
fi
echo "built $src into $site"
python3 "$repo/benchmarks/ptxas_report.py" "$site.log" | grep -E "spill st/ld [1-9]|kernels," || true
