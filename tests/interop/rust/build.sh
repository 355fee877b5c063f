#!/usr/bin/env bash
# Build the Rust interop client. Dependencies come from crates.io (cargo's registry cache lives in
# $CARGO_HOME, outside the checkout); build outputs go to the interop cache dir, not target/ here.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v cargo >/dev/null 2>&1; then
    echo "build.sh (rust): cargo not found on PATH; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

CACHE="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/rust"
mkdir -p "$CACHE"
export CARGO_TARGET_DIR="$CACHE/target"

# --locked: build exactly the versions in Cargo.lock. cargo is incremental, so this is quick when built.
cargo build --locked --quiet --manifest-path "$HERE/Cargo.toml"
