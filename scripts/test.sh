#!/usr/bin/env bash
# Sets up a fresh machine and runs every check and test keel has: formatting, lints for the host
# and both musl targets, unit and integration tests, and the VM boot tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n=== %s\n' "$*"; }
guest=(-p keel-init -p keel-shim -p keel-supervisor -p keel-metadata)

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
