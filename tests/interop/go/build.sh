#!/usr/bin/env bash
# Build the Go interop client: fetch its modules through the Go module proxy and compile it into
# ${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/go. Go's module and build caches keep their
# defaults (GOMODCACHE, GOCACHE), which live outside the checkout. Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/go"

command -v go >/dev/null 2>&1 || {
    echo "tests/interop/go: the Go toolchain (go >= 1.26) is not on PATH" >&2
    exit 1
}
# Use the installed toolchain; go.mod's `go` line decides whether it is new enough.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"

mkdir -p "$CACHE"
cd "$HERE"
go mod download
go build -trimpath -o "$CACHE/interop-client" .
