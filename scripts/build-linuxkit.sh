#!/usr/bin/env bash
# Builds the `linuxkit` CLI from a LinuxKit source tree, offline, with Debian's Go, so that the
# benchmark harness (scripts/bench.sh build) can measure it beside keel.
#
#   scripts/build-linuxkit.sh SRC OUT
#
# SRC is a LinuxKit checkout (its top directory, or src/cmd/linuxkit); OUT is the binary to
# write. LinuxKit vendors its Go modules, so nothing is downloaded. Debian 12's newest Go is
# golang-1.23-go (bookworm-backports), which builds LinuxKit up to v1.7.1 (`go 1.23.0` in
# src/cmd/linuxkit/go.mod); v1.8 and later need Go 1.24 and are refused with that reason.
# SRC is copied, never changed. When the vendored AWS EC2 or GCP compute packages are absent
# (source snapshots leave out files over a size limit, and these are the largest),
# `linuxkit push|run aws|gcp` are replaced in the copy by commands that say they were left out;
# `linuxkit build`, which is what is measured, does not touch them.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 LINUXKIT-SOURCE OUT" >&2
    exit 2
fi
src=$1
out=$2
if [ -f "$src/src/cmd/linuxkit/go.mod" ]; then
    src=$src/src/cmd/linuxkit
fi
if [ ! -f "$src/go.mod" ] || [ ! -f "$src/vendor/modules.txt" ]; then
    echo "$0: $src is not LinuxKit's src/cmd/linuxkit with its vendor directory" >&2
    exit 1
fi

go=/usr/lib/go-1.23/bin/go
if [ ! -x "$go" ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get install -y -q -t bookworm-backports golang-1.23-go
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$src/." "$work/"
cd "$work"

# The go line names the oldest Go the module builds with; GOTOOLCHAIN=local keeps Go from
# fetching the newer toolchain a `toolchain` line asks for.
need=$(sed -n -E 's/^go ([0-9]+\.[0-9]+).*/\1/p' go.mod)
if [ "$(printf '%s\n1.23\n' "$need" | sort -V | tail -1)" != 1.23 ]; then
    echo "$0: this LinuxKit needs Go $need and Debian 12 has 1.23: use LinuxKit v1.7.1 (git checkout v1.7.1)" >&2
    exit 1
fi

stubbed=
if [ ! -f vendor/github.com/aws/aws-sdk-go/service/ec2/api.go ]; then
    rm -f push_aws.go run_aws.go
    cat > keel_stub_aws.go <<'EOF'
package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// Left out by keel's scripts/build-linuxkit.sh: the vendored AWS EC2 package is absent.
var errNoAWS = errors.New("this linuxkit was built without AWS support")

func pushAWSCmd() *cobra.Command {
	return &cobra.Command{Use: "aws", Short: "left out of this build", RunE: func(*cobra.Command, []string) error { return errNoAWS }}
}

func runAWSCmd() *cobra.Command {
	return &cobra.Command{Use: "aws", Short: "left out of this build", RunE: func(*cobra.Command, []string) error { return errNoAWS }}
}
EOF
    stubbed="$stubbed aws"
fi
if [ ! -f vendor/google.golang.org/api/compute/v1/compute-gen.go ]; then
    rm -f gcp.go
    cat > keel_stub_gcp.go <<'EOF'
package main

import "errors"

// Left out by keel's scripts/build-linuxkit.sh: the vendored GCP compute package is absent.
var errNoGCP = errors.New("this linuxkit was built without GCP support")

type GCPClient struct{}

func NewGCPClient(keys, projectName string) (*GCPClient, error) { return nil, errNoGCP }
func (g GCPClient) UploadFile(src, dst, bucketName string, public bool) error { return errNoGCP }
func (g GCPClient) CreateImage(name, storageURL, family string, nested, uefi, replace bool) error {
	return errNoGCP
}
func (g GCPClient) DeleteImage(name string) error { return errNoGCP }
func (g GCPClient) CreateInstance(name, image, zone, machineType string, disks Disks, data *string, nested, vtpm, replace bool) error {
	return errNoGCP
}
func (g GCPClient) DeleteInstance(instance, zone string, wait bool) error  { return errNoGCP }
func (g GCPClient) GetInstanceSerialOutput(instance, zone string) error    { return errNoGCP }
func (g GCPClient) ConnectToInstanceSerialPort(instance, zone string) error { return errNoGCP }
EOF
    stubbed="$stubbed gcp"
fi

version=${LINUXKIT_VERSION:-$(git -C "$src" describe --tags --always 2>/dev/null || echo unknown)}
CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=vendor \
    "$go" build -trimpath \
    -ldflags "-s -w -X github.com/linuxkit/linuxkit/src/cmd/linuxkit/version.Version=$version" \
    -o "$work/linuxkit" .
mkdir -p "$(dirname "$out")"
mv "$work/linuxkit" "$out"
echo "wrote $out (linuxkit $version${stubbed:+; left out:$stubbed})"
