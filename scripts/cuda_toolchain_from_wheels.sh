#!/usr/bin/env bash
# Assembles a CUDA 13.0 build toolchain (nvcc, headers, link libraries) from NVIDIA's Python
# wheels, for building `--features cuda` on a machine without a system CUDA toolkit, such as
# a CPU-only build host whose binary then runs on a GPU machine.
#
# Why 13.0 exactly: the PTX that nvcc writes carries its ISA version, and a driver older than
# the compiler refuses it at load time ("unsupported PTX version"). Match the oldest driver
# you deploy to (CUDA_WHEEL_VERSION=12.8 gives a 12.x toolchain; the wheel names differ).
#
# The driver library (libcuda.so.1) is not in any wheel: it ships with the GPU driver. For
# linking we generate a stub with the same soname that defines every driver entry point
# cudarc declares; at run time the real driver is loaded in its place (this is what the
# toolkit's own lib/stubs/libcuda.so is for).
#
# Usage: scripts/cuda_toolchain_from_wheels.sh DIR
#   then: export CUDA_HOME=DIR PATH=DIR/bin:$PATH CUDA_COMPUTE_CAP=90
#         cargo build --release --features cuda
set -euo pipefail

DIR=${1:?usage: $0 DIR}
VER=${CUDA_WHEEL_VERSION:-13.0}
mkdir -p "$DIR/wheels"
DIR=$(cd "$DIR" && pwd)

if [ ! -x "$DIR/bin/nvcc" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR/wheels" \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 --python-version 3.11 \
    "nvidia-cuda-nvcc==$VER.*" "nvidia-nvvm==$VER.*" "nvidia-cuda-crt==$VER.*" \
    "nvidia-cuda-runtime==$VER.*" "nvidia-cuda-cccl==$VER.*" "nvidia-cuda-nvrtc==$VER.*" \
    "nvidia-cublas==$VER.*" nvidia-curand
  tmp=$(mktemp -d)
  for w in "$DIR"/wheels/*.whl; do unzip -q -o "$w" -d "$tmp"; done
  # The wheels unpack under nvidia/cuNN/{bin,include,lib,nvvm}: the layout of a toolkit.
  root=$(ls -d "$tmp"/nvidia/cu*/ | head -1)
  cp -a "$root"/. "$DIR"/
  rm -rf "$tmp"
fi

# Unversioned names for the linker (the wheels carry only libX.so.N).
for lib in "$DIR"/lib/lib*.so.*; do
  base=$(basename "$lib")
  case "$base" in *alt*|*builtins*) continue ;; esac
  ln -sf "$base" "$DIR/lib/${base%%.so.*}.so"
done

# The driver stub: every cu* entry point cudarc's driver bindings declare.
if [ ! -e "$DIR/lib/stubs/libcuda.so" ]; then
  mkdir -p "$DIR/lib/stubs"
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs | tail -1)
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$src" | awk '{print "void " $4 "(void) {}"}' \
    | sort -u > "$DIR/lib/stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$DIR/lib/stubs/libcuda.so" "$DIR/lib/stubs/libcuda_stub.c"
fi

"$DIR/bin/nvcc" --version | tail -2
echo "export CUDA_HOME=$DIR PATH=$DIR/bin:\$PATH CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
