#!/bin/sh
# Prints make variables locating the CUDA toolkit, cuDNN and NCCL on this machine.
# Used by the Makefile (it includes the output as build/cuda.mk). cuDNN and NCCL live in
# different places on the machines we build on: the toolkit's own folders, the system's,
# or the nvidia-* Python wheels next to PyTorch. The first folder holding both the header and
# the library wins; a variable already set in the environment (CUDNN_HOME, NCCL_HOME) wins over all.
set -u
nvcc_path=$(command -v nvcc 2>/dev/null || true)
if [ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_path=/usr/local/cuda/bin/nvcc; fi
if [ -z "$nvcc_path" ]; then echo "HAVE_NVCC := 0"; exit 0; fi
cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
echo "HAVE_NVCC := 1"
echo "NVCC := $nvcc_path"
echo "CUDA_HOME := $cuda_home"

py_site=""
for py in python3 /opt/torch/.venv/bin/python3; do
  if command -v "$py" >/dev/null 2>&1; then
    s=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
    [ -n "$s" ] && py_site="$py_site $s"
  fi
done

# find_lib NAME HEADER LIBBASE HOME_OVERRIDE: print NAME_INC, NAME_LIBDIR, NAME_LINK
find_lib() {
  name=$1; header=$2; base=$3; override=$4
  cands="$override $cuda_home $cuda_home/targets/x86_64-linux /usr/local /usr /usr/local/$base"
  for s in $py_site; do cands="$cands $s/nvidia/$base $s/nvidia/cu13 $s/nvidia/${base}_cu13"; done
  for d in $cands; do
    [ -d "$d" ] || continue
    inc=""
    for i in "$d/include" "$d/include/x86_64-linux-gnu"; do [ -f "$i/$header" ] && inc=$i && break; done
    [ -z "$inc" ] && [ -f "/usr/include/x86_64-linux-gnu/$header" ] && [ "$d" = /usr ] && inc=/usr/include/x86_64-linux-gnu
    [ -z "$inc" ] && continue
    for l in "$d/lib64" "$d/lib" "$d/lib/x86_64-linux-gnu" /usr/lib/x86_64-linux-gnu; do
      if [ -e "$l/lib$base.so" ]; then
        echo "${name}_INC := $inc"; echo "${name}_LIBDIR := $l"; echo "${name}_LINK := -l$base"; return 0
      fi
      f=$(ls "$l"/lib$base.so.[0-9]* 2>/dev/null | head -n 1)
      if [ -n "$f" ]; then
        echo "${name}_INC := $inc"; echo "${name}_LIBDIR := $l"; echo "${name}_LINK := -l:$(basename "$f")"; return 0
      fi
    done
  done
  echo "${name}_INC :="; echo "${name}_LIBDIR :="; echo "${name}_LINK :="
  return 1
}
find_lib CUDNN cudnn.h cudnn "${CUDNN_HOME:-}" || echo "\$(warning cuDNN not found: set CUDNN_HOME)"
find_lib NCCL nccl.h nccl "${NCCL_HOME:-}" || echo "\$(warning NCCL not found: set NCCL_HOME)"
