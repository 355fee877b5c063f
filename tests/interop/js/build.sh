#!/usr/bin/env bash
# Install the JavaScript interop client's dependencies (@grpc/grpc-js, @grpc/proto-loader,
# apache-arrow) from npm, exactly as pinned in package-lock.json. Idempotent: `npm ci` is skipped
# when node_modules is newer than package-lock.json. npm's download cache stays in ~/.npm, outside
# the checkout; node_modules (gitignored) sits here because Node resolves ES module imports
# relative to the importing file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build.sh (js): '$tool' not found on PATH; install Node.js 20+ with npm" >&2
    exit 1
  fi
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "build.sh (js): Node.js 20+ required, found $(node --version)" >&2
  exit 1
fi

if [ -d node_modules ] && [ node_modules -nt package-lock.json ]; then
  exit 0
fi
# --ignore-scripts: no dependency needs an install script (protobufjs' only prints a version hint).
npm ci --prefer-offline --ignore-scripts --no-audit --no-fund --loglevel=error
touch node_modules
