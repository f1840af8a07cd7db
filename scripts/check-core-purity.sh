#!/usr/bin/env bash
# Fails when the pure core gains an IO dependency or IO/clock/thread/env use in its source.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(cargo tree -p studio-core -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
bad=$(echo "$deps" | grep -E '^(tungstenite|async-tungstenite|mio|smol|async-io|ureq|reqwest|tokio|hyper|socket2|rand|getrandom|libc|nix)$' || true)
if [ -n "$bad" ]; then
  echo "core purity: forbidden IO/OS dependencies in studio-core: $bad" >&2
  exit 1
fi
# Library sources only (tests may read the vectors file).
hits=$(grep -rnE 'Instant::now|SystemTime::now|std::net|std::fs|std::thread|std::env|std::process|HashMap|HashSet|rand::' core/src | grep -vE '^\S+:\s*//' | grep -v '#\[cfg(test)\]' || true)
if [ -n "$hits" ]; then
  echo "core purity: clock/IO/thread/env/hash-order use in core/src:" >&2
  echo "$hits" >&2
  exit 1
fi
echo "core purity: ok ($(echo "$deps" | wc -l) normal deps: $(echo "$deps" | tr '\n' ' '))"
