#!/usr/bin/env bash
# Build fwd_bench of a baseline revision next to this checkout's build, for a same-run A/B
# with benchmarks/fwd_ab.py on the GPU machine (which has no git and no network).
#
#   Here:   git archive REV | gzip > .ab/baseline.tgz     (.ab/ is in .git/info/exclude)
#   There:  bash benchmarks/baseline_build.sh .ab/baseline.tgz /tmp/baseline [CONFIGS]
#           python3 benchmarks/fwd_ab.py /tmp/baseline/build/benchmarks/cpp/fwd_bench \
#             build/gpu_check/benchmarks/cpp/fwd_bench
#
# CONFIGS: a ;-list of kernel configs (default: every Hopper production config, which the
# heuristic picks for the standard cells on an H100). The kernels need CUTLASS's headers:
# the nvidia-cutlass wheel installed in the python3 that runs this (gpu_check.sh installs
# it into /tmp/fa_cute_site).
set -euo pipefail
tarball=${1:?baseline source tarball}
dest=${2:?folder to unpack and build in}
configs=${3:-sm90_m128n112_d192;sm90_m128n176_d128;sm90_m128n64_d256;sm90_m192n112_d64;sm90_m64n128_d128;sm90_m64n128_d64;sm90_m64n128_d96;sm90_m64n64_d192;sm90_m64n64_d256;sm90p_m128n112_d192;sm90p_m128n128_d128;sm90p_m128n128_d96;sm90p_m128n192_d64;sm90p_m128n64_d256;sm90p_m192n112_d64;sm90p_m192n96_d96}
mkdir -p "$dest"
tar -xzf "$tarball" -C "$dest"
cmake -S "$dest" -B "$dest/build" -G Ninja -DFA_CUTE_ARCHS=90a -DFA_CUTE_BUILD_PYTHON=OFF \
  -DFA_CUTE_BUILD_BENCH=ON -DFA_CUTE_CONFIGS="$configs" -DPython_EXECUTABLE="$(command -v python3)" \
  >"$dest/cmake.log" 2>&1 || { tail -n 40 "$dest/cmake.log"; exit 1; }
cmake --build "$dest/build" --target fwd_bench >"$dest/build.log" 2>&1 \
  || { tail -n 60 "$dest/build.log"; exit 1; }
echo "baseline fwd_bench: $dest/build/benchmarks/cpp/fwd_bench"
