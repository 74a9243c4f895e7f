#!/usr/bin/env bash
# Installs everything keel needs to build and test on a fresh Debian 12 (bookworm) machine:
# the Rust musl targets, QEMU and firmware, and the third-party clients the tests use.
# Idempotent: a second run only checks.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Rust targets -----------------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
  have=$(rustup target list --installed)
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    grep -qx "$t" <<<"$have" || { log "adding rust target $t"; rustup target add "$t"; }
  done
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
fi

# --- Debian packages --------------------------------------------------------------------------
packages=(
  # QEMU from backports (matches the image's qemu-utils 10.0), firmware
  qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 seabios
  # OCI peers used by tests: a real registry server and third-party clients
  docker-registry skopeo umoci
  # peer runtimes for benchmarks, test payloads
  crun runc busybox-static
  # boot media helpers and checks
  xorriso mtools dosfstools squashfs-tools erofs-utils isolinux syslinux-common systemd-boot-efi
  # veritysetup and sfdisk: the reference checks of the dm-verity trees and partition tables
  # keel writes (--verity)
  cryptsetup-bin fdisk
  cpio zstd xz-utils hyperfine
  # Secure Boot: signing UKIs (keel build --sign-with), enrolling keys in the firmware's
  # variables (keel run --secure-boot; from backports), a TPM for keel run --tpm
  sbsigntool python3-virt-firmware swtpm
  # sbsign stamps the signing time: it runs with the clock stopped at SOURCE_DATE_EPOCH
  faketime
  # clients the example-system tests use against booted guests; python3 also serves the A/B
  # test's update over HTTP (tests/tests/ab.rs: python3 -m http.server)
  redis-tools curl openssh-client python3
  # libraries virtiofsd (below) links against
  libseccomp-dev libcap-ng-dev pkg-config
  # kernels from source (kernel/virt, keel_kernel::source): compilers for both architectures
  # and what the kernel's build runs
  gcc gcc-aarch64-linux-gnu make flex bison bc libelf-dev libssl-dev openssl dwarves rsync kmod
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Enable bookworm-backports in the existing Debian sources entry (derived, not hard-coded).
  src=$(grep -l 'Suites:.*bookworm' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
  bp=/etc/apt/sources.list.d/keel-backports.sources
  if [ -n "$src" ] && [ ! -f "$bp" ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$src")
    log "enabling bookworm-backports from $uri"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
      "$uri" "$keyring" | as_root tee "$bp" >/dev/null
  fi
  log "installing: ${missing[*]}"
  as_root apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  # QEMU system emulators must come from backports to match qemu-utils.
  as_root apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-system-arm >/dev/null
  as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  # The registry package starts a daemon on :5000; tests start their own on a free port.
  as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# --- SPDX validator ---------------------------------------------------------------------------
# keel/tests/cli_sbom.rs validates the build's SBOM with spdx-tools' `pyspdxtools` (PyPI), kept in
# a virtual environment under the target directory.
spdx_version=0.8.5
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/tools/spdx"
if ! "$venv/bin/pyspdxtools" --help >/dev/null 2>&1 \
  || ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('spdx-tools') != '$spdx_version')" 2>/dev/null; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "installing python3-venv"
    as_root apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  log "installing spdx-tools $spdx_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q "spdx-tools==$spdx_version"
fi

# --- virtiofsd ---------------------------------------------------------------------------------
# `keel run --virtiofs` starts the Rust virtiofsd, which Debian 12 does not package; the tests
# (keel/tests/cli_run.rs, tests/tests/virtiofs.rs) use this one, built from crates.io into a
# directory under the target directory.
virtiofsd_version=1.14.0
virtiofsd_root="$root/target/tools/virtiofsd"
if ! "$virtiofsd_root/bin/virtiofsd" --version 2>/dev/null | grep -qx "virtiofsd $virtiofsd_version"; then
  log "installing virtiofsd $virtiofsd_version into $virtiofsd_root"
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --force "virtiofsd@$virtiofsd_version" \
    --root "$virtiofsd_root"
fi
log "ok"
