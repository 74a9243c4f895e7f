#!/usr/bin/env bash
# Sets up a fresh machine and runs every check and test keel has: formatting, lints for the host
# and both musl targets, unit and integration tests, and the VM boot tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n=== %s\n' "$*"; }

# What a fresh machine sees: a throwaway image store and package cache for this run, so a pin
# that has left Debian's archive or a missing install step fails here the day it happens, not
# on a user's first build. KEEL_TEST_CACHE=DIR keeps and reuses DIR instead (faster local
# iteration; everything in it is verified by digest when read). KEEL_CACHE keeps tests off the
# user's own store.
if [ -z "${KEEL_TEST_CACHE:-}" ]; then
  KEEL_TEST_CACHE=$(mktemp -d "${TMPDIR:-/tmp}/keel-test-cache.XXXXXX")
  trap 'rm -rf "$KEEL_TEST_CACHE"' EXIT
fi
export KEEL_TEST_CACHE
export KEEL_CACHE="$KEEL_TEST_CACHE/user-store"
echo "test caches: $KEEL_TEST_CACHE" >&2
guest=(-p keel-init -p keel-shim -p keel-supervisor -p keel-metadata -p keel-attack)

step "format"
cargo fmt --all -- --check

step "clippy (host)"
cargo clippy --workspace --all-targets --locked -- -D warnings

for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  step "clippy (guest crates, $target)"
  cargo clippy "${guest[@]}" --target "$target" --all-targets --locked -- -D warnings
done

# The VM tests put these binaries into the images they boot (tests/src/lib.rs finds them).
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  step "guest binaries ($target)"
  cargo build "${guest[@]}" --target "$target" --profile guest --locked
done

step "tests"
cargo test --workspace --locked
