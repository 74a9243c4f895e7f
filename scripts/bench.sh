#!/usr/bin/env bash
# keel's benchmarks, each measured beside its peer in the same run (docs/benchmarks.md).
#
#   scripts/bench.sh build [RUNS]   warm `keel build` against `linuxkit build` ($LINUXKIT), the
#                                   same YAML and images: kernel+initrd and tar
#   scripts/bench.sh boot [ARGS]    PID 1 → services against the bare-kernel floor
#                                   (tests/examples/bootbench.rs; ARGS are its flags)
#   scripts/bench.sh runtime        keel-shim against crun and runc in one VM
#                                   (tests/cases/sup/bench.sh, run by the supervision test)
#   scripts/bench.sh swarm          four `images/swarm.yml` nodes: boot to a swarm of three
#                                   Ready, each node's QEMU RSS, rescheduling and rejoin times
#                                   (tests/tests/swarm.rs; no peer runs here, see benchmarks.md)
#
# Each prints a one-line summary per measure (`bench: ...`) after its table, so a run can be
# compared with the last one at a glance. Times are wall-clock and noisy: the benchmarks are
# not tests and assert nothing about them.
#
# The store is $KEEL_CACHE (keel's default when unset). `build` fills it with one `keel build`
# first; the linuxkit side gets the same images, copied by skopeo with their digests into a
# LinuxKit cache of its own, and a YAML with every `@pkg:` replaced by the tag keel built.
# Without $LINUXKIT, `build` says so and measures keel alone; scripts/build-linuxkit.sh makes a
# linuxkit binary from LinuxKit's source, offline.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
what=${1:-}
[ $# -gt 0 ] && shift

summary() { echo "bench: $*"; }

need() {
    for tool in "$@"; do
        if ! command -v "$tool" > /dev/null; then
            echo "$0: $tool is missing (scripts/setup.sh installs it)" >&2
            exit 1
        fi
    done
}

# The median, in seconds, of one command in hyperfine's JSON export.
median() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print("%.3f" % [x for x in r if x["command"]==sys.argv[2]][0]["median"])' "$1" "$2"
}

bench_build() {
    local runs=${1:-10}
    need hyperfine skopeo python3
    cargo build --release --locked -q -p keel
    local keel=$here/target/release/keel
    # Global: the EXIT trap runs after this function's locals are gone.
    work=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    local yaml=images/minimal.yml
    echo "filling the store: $keel build $yaml" >&2
    "$keel" build -q --dir "$work/warm" "$yaml" >&2

    # The same system with its images named by their tags, and without keel's own keys
    # (`console:`, a service's `control:`), which linuxkit's schema refuses.
    local tagged=$work/minimal-tags.yml
    sed -E '/^console:/d; /^[[:space:]]+control:/d' "$yaml" > "$tagged"
    local refs=()
    while read -r dir; do
        local ref
        ref=$("$keel" pkg show-tag "images/$dir")
        refs+=("$ref")
        sed -i "s|\"@pkg:$dir\"|\"$ref\"|" "$tagged"
    done < <(grep -o '"@pkg:[^"]*"' "$yaml" | sed 's/"@pkg:\(.*\)"/\1/' | sort -u)
    if grep -q '@pkg:' "$tagged"; then
        echo "$0: $tagged still names a package: $(grep '@pkg:' "$tagged")" >&2
        exit 1
    fi

    local cmds=(
        -n "keel kernel+initrd" "$keel build -q --dir $work/k1 $tagged"
        -n "keel kernel+initrd gzip" "$keel build -q --initrd-compression gzip --dir $work/k3 $tagged"
        -n "keel tar" "$keel build -q -f tar --dir $work/k2 $tagged"
    )
    if [ -n "${LINUXKIT:-}" ]; then
        [ -x "$LINUXKIT" ] || { echo "$0: LINUXKIT=$LINUXKIT is not an executable" >&2; exit 1; }
        local store=${KEEL_CACHE:-$HOME/.cache/keel}
        local lkcache=$work/linuxkit-cache
        for ref in "${refs[@]}"; do
            skopeo copy -q --all --preserve-digests "oci:$store:$ref" "oci:$lkcache:$ref"
        done
        # linuxkit writes NAME-kernel, NAME-initrd.img, NAME-cmdline as keel does, into
        # directories that must exist.
        mkdir -p "$work/l0" "$work/l1" "$work/l2"
        "$LINUXKIT" build --cache "$lkcache" --format kernel+initrd --dir "$work/l0" "$tagged" >&2
        cmds+=(
            -n "linuxkit kernel+initrd" "$LINUXKIT build --cache $lkcache --format kernel+initrd --dir $work/l1 $tagged"
            -n "linuxkit tar" "$LINUXKIT build --cache $lkcache --format tar --dir $work/l2 $tagged"
        )
    else
        echo "LINUXKIT is not set: measuring keel alone (scripts/build-linuxkit.sh makes one)" >&2
    fi
    hyperfine --warmup 1 --runs "$runs" --export-json "$work/build.json" \
        --export-markdown "$work/build.md" "${cmds[@]}" >&2
    cat "$work/build.md"
    # The gzip row is keel writing the initrd as linuxkit does (keel's default is zstd when the
    # kernel unpacks it); linuxkit's kernel+initrd is compared with both.
    summary "build kernel+initrd gzip: keel $(median "$work/build.json" "keel kernel+initrd gzip")s"
    for format in kernel+initrd tar; do
        local k
        k=$(median "$work/build.json" "keel $format")
        if [ -n "${LINUXKIT:-}" ]; then
            local l
            l=$(median "$work/build.json" "linuxkit $format")
            summary "build $format: keel ${k}s linuxkit ${l}s ratio $(python3 -c "print('%.2f' % ($k/$l))")"
        else
            summary "build $format: keel ${k}s (no linuxkit)"
        fi
    done
}

case "$what" in
    build) bench_build "$@" ;;
    boot) exec cargo run --release --locked -q -p keel-vmtests --example bootbench -- "$@" ;;
    runtime)
        need cargo
        cargo test --locked -p keel-vmtests --test supervision hostile_socket_and_benchmark_x86_64
        console=${TMPDIR:-/tmp}/keel-sup-bench-amd64.console
        grep 'bench|' "$console"
        ;;
    swarm)
        need cargo
        cargo test --locked -p keel-vmtests --test swarm -- --nocapture 2>&1 |
            sed -n 's/^swarm: /bench: swarm: /p'
        ;;
    *)
        echo "usage: $0 build [RUNS] | boot [BOOTBENCH-ARGS] | runtime | swarm" >&2
        exit 2
        ;;
esac
