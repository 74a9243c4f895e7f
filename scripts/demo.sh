#!/usr/bin/env bash
# Sets up this machine, builds the default system (images/minimal.yml) and boots it in QEMU.
# The console shows the onboot container's output and `keelctl list` run by the `status`
# service, then the `keel>` prompt (console: inspect): type `list`, `logs status`, `top`,
# `help`. From another terminal, `target/release/keel ctl out/minimal list` does the same from
# the host (docs/inspection.md). Leave QEMU with ctrl-a x.
#
#   ARCH=aarch64 ./scripts/demo.sh      # the same for aarch64 (emulated)
#   BOOT=0 ./scripts/demo.sh            # build only
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

arch=${ARCH:-x86_64}
out=${OUT:-out}
cargo build --release --locked -p keel
keel=target/release/keel

# Kernel, init and busybox images are directories of this repository ("@pkg:" in the YAML):
# the first build puts them into the image store (downloads Debian's kernel and busybox once).
"$keel" build --arch "$arch" --dir "$out" images/minimal.yml
ls -l "$out"/minimal-*

if [ "${BOOT:-1}" = 1 ]; then
  echo "booting $out/minimal ($arch); ctrl-a x quits" >&2
  exec "$keel" run qemu --arch "$arch" --mem 512 "$out/minimal"
fi
