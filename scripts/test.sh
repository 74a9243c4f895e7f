#!/usr/bin/env bash
# Sets up a fresh machine and runs every check and test keel has: formatting, lints for the host
# and both musl targets, unit and integration tests, and the VM boot tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

# Each step says when it starts, in seconds since the run began, so a slow CI log shows where
# the time went.
step() { printf '\n=== [%d s] %s\n' "$SECONDS" "$*"; }

# What a fresh machine sees: a throwaway image store and package cache for this run, so a pin
# that has left Debian's archive or a missing install step fails here the day it happens, not
# on a user's first build. KEEL_TEST_CACHE=DIR keeps and reuses DIR instead (faster local
# iteration; everything in it is verified by digest when read). KEEL_CACHE keeps tests off the
# user's own store.
# On the way out, whatever the outcome: stop the background test (below) and drop the
# throwaway caches.
source_pid=
throwaway_cache=
cleanup() {
  if [ -n "$source_pid" ]; then kill -- "-$source_pid" 2>/dev/null || true; fi
  if [ -n "$throwaway_cache" ]; then rm -rf "$throwaway_cache"; fi
}
trap cleanup EXIT
if [ -z "${KEEL_TEST_CACHE:-}" ]; then
  KEEL_TEST_CACHE=$(mktemp -d "${TMPDIR:-/tmp}/keel-test-cache.XXXXXX")
  throwaway_cache=$KEEL_TEST_CACHE
fi
export KEEL_TEST_CACHE
export KEEL_CACHE="$KEEL_TEST_CACHE/user-store"
echo "test caches: $KEEL_TEST_CACHE" >&2
guest=(-p keel-init -p keel-shim -p keel-supervisor -p keel-metadata -p keel-swarm -p keel-guest -p keel-attack -p keel-disk)

step "format"
cargo fmt --all -- --check

# The kernels-from-source test (crates/kernel/tests/source.rs) compiles three small kernels: a
# quarter of the run, almost all of it in the kernel's own make. It runs from here on in the
# background at the lowest priority, so it takes only the CPU that compiling and the VM tests
# (QEMU waiting on guest timers and the network) leave idle; its log is printed at the end. It
# runs its binary directly: `cargo test` holds the build directory's lock while tests run.
step "kernels from source (in the background)"
source_test=$(cargo test -p keel-kernel --test source --locked --no-run --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "source" and m.get("executable"):
        print(m["executable"])')
[ -x "$source_test" ] || { echo "no test binary for crates/kernel/tests/source.rs" >&2; exit 1; }
source_log=$(mktemp "${TMPDIR:-/tmp}/keel-source-test.XXXXXX")
# Its own process group (setsid), so that cleanup stops the kernel's make with it.
(cd crates/kernel && exec setsid -w nice -n 19 "$source_test" >"$source_log" 2>&1) &
source_pid=$!

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
# The source test's kernels are built by the background run above.
cargo test --workspace --locked -- --skip builds_both_architectures_reproducibly_with_the_patch

step "kernels from source (waiting for the background run)"
source_rc=0
wait "$source_pid" || source_rc=$?
source_pid=
cat "$source_log"
rm -f "$source_log"
if [ "$source_rc" -ne 0 ]; then
  echo "crates/kernel/tests/source.rs failed (exit $source_rc)" >&2
  exit "$source_rc"
fi
step "done"
