#!/usr/bin/env bash
# Builds the Java interop client with Maven. Dependencies come from Maven Central into ~/.m2; build
# output goes to the cache dir, never into the checkout. Skips Maven when nothing changed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VGI_INTEROP_CACHE:-$HOME/.cache/vgi-flight-interop}/java"
BUILD="$CACHE/target"
STAMP="$BUILD/.built"

for tool in java javac mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "java/build.sh: '$tool' not found on PATH: install JDK 17+ and Maven 3.8+" >&2
    exit 1
  fi
done

# Up to date when the stamp is newer than pom.xml and every source file.
if [[ -f "$STAMP" && -f "$BUILD/classpath.txt" ]] \
  && [[ -z "$(find "$HERE/pom.xml" "$HERE/src" -newer "$STAMP" -print -quit)" ]]; then
  exit 0
fi

mkdir -p "$CACHE"
rm -f "$STAMP"
# Maven 3.8 prints stray ANSI resets even in batch/quiet mode: strip them and keep Maven's output
# off stdout (pipefail still reports Maven's exit status).
if ! mvn -q -B -f "$HERE/pom.xml" -DbuildDirectory="$BUILD" compile 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g' >&2; then
  echo "java/build.sh: mvn build failed" >&2
  exit 1
fi
touch "$STAMP"
