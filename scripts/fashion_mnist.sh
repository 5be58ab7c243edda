#!/usr/bin/env bash
# Make the full Fashion-MNIST (70,000 images, the four IDX .gz files) available offline from
# Debian's dataset-fashion-mnist package, in the folder params.yaml's catalog names
# (data.catalog.fashion_mnist.local_dir). Installs it with apt when missing and allowed.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
present() { for f in "${files[@]}"; do [ -f "$dir/$f" ] || return 1; done; }
if present; then
  echo "fashion-mnist: $dir has all four files"
  exit 0
fi
echo "fashion-mnist: installing Debian's dataset-fashion-mnist"
rc=0
"$(dirname "$0")/apt_install.sh" dataset-fashion-mnist || rc=$?
if [ "$rc" -eq 3 ]; then
  echo "fashion-mnist: $dir is missing: run 'apt-get install dataset-fashion-mnist' as root," >&2
  echo "  or point data.file.dir at a folder with ${files[*]}" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
present || { echo "fashion-mnist: the package installed, but $dir still lacks a file" >&2; exit 1; }
echo "fashion-mnist: $dir has all four files"
