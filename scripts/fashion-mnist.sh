#!/bin/sh
# Makes Fashion-MNIST available offline for the demo and the tests: installs Debian's `dataset-fashion-mnist`
# package (the IDX files in /usr/share/datasets/fashion-mnist) with apt, as root or through sudo.
#
# Does nothing when the files are already in that folder or in progdistill's download cache
# ($PROGDISTILL_CACHE/fashion-mnist, else ~/.cache/progdistill/fashion-mnist). Where apt is absent or there are no
# root rights, it says so and exits 0: `progdistill demo` then downloads the files into the cache (checksums
# verified), which needs internet access. With --strict (CI), a failed install exits 1 instead.
#
# Usage: sh scripts/fashion-mnist.sh [--strict]
set -u
strict=0
[ "${1:-}" = "--strict" ] && strict=1
pkg=dataset-fashion-mnist
system_dir=${PROGDISTILL_FASHION_MNIST_SYSTEM_DIR:-/usr/share/datasets/fashion-mnist}  # overridable for tests
cache_dir=${PROGDISTILL_CACHE:-$HOME/.cache/progdistill}/fashion-mnist

say() { echo "fashion-mnist.sh: $*" >&2; }
give_up() {  # $1: why
  if [ "$strict" = 1 ]; then say "$1"; exit 1; fi
  say "$1; progdistill will download Fashion-MNIST into $cache_dir instead (needs internet access)"
  exit 0
}
has_all() {  # $1: folder holding all four IDX files, plain or gzipped
  for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$1/$name" ] || [ -f "$1/$name.gz" ] || return 1
  done
}

for dir in "$system_dir" "$cache_dir"; do
  if has_all "$dir"; then say "Fashion-MNIST found in $dir"; exit 0; fi
done
command -v apt-get >/dev/null 2>&1 || give_up "no apt-get on this machine"

if [ "$(id -u)" = 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
  as_root="sudo"  # asks for a password only when run from a terminal
else
  give_up "not root and no usable sudo, so cannot install $pkg (as root: apt-get install $pkg)"
fi

install() {
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg"
}
say "installing Debian's $pkg (30 MB) with apt"
# The package lists of a fresh machine are often empty or stale: read them (once) when apt does not know the
# package or its install fails.
if ! { apt-cache show "$pkg" >/dev/null 2>&1 && install; }; then
  $as_root apt-get update -q || give_up "apt-get update failed"
  install || give_up "apt-get install $pkg failed (not in this release's package lists?)"
fi
has_all "$system_dir" || give_up "$pkg is installed but $system_dir lacks the IDX files"
say "Fashion-MNIST installed in $system_dir"
