#!/usr/bin/env bash
# Regenerates hot-text.ld (see README.md): builds `nsm` with function-entry instrumentation in its own
# target directory, runs the components under a workload with the mcount.c recorder preloaded, and
# writes the functions each one ran, NSMgr first. Needs gcc, python3, objdump and nm; `nsm up --once`
# is part of the workload when run as root. Takes about as long as a release build plus two minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${LAYOUT_TARGET_DIR:-$root/target/layout}"
work="$(mktemp -d /tmp/nsm-layout.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# -Z instrument-mcount is a nightly flag: RUSTC_BOOTSTRAP lets the pinned stable compiler take it for
# this build only. Legacy mangling as in the release build (nightly defaults to v0).
(cd "$root" && RUSTC_BOOTSTRAP=1 \
  RUSTFLAGS="-Z instrument-mcount -Z unstable-options -C symbol-mangling-version=legacy" \
  NSM_DEFAULT_LAYOUT=1 CARGO_TARGET_DIR="$target" cargo build --release -p nsm)
nsm="$target/release/nsm"
gcc -O2 -fPIC -shared -o "$work/libmcount.so" "$here/mcount.c"

mkdir -p "$work/maps"
run() { (cd "$work" && LD_PRELOAD="$work/libmcount.so" MCOUNT_DIR="$work/maps" "$nsm" "$@"); }
# Start-up, registration, Request+Close at several concurrencies, held connections, shutdown.
run bench mesh --concurrency 1,8,32 --duration 10s --hold 200
run bench mesh --insecure --concurrency 1,8 --duration 5s
if [ "$(id -u)" = 0 ]; then
  # Kernel forwarders, VXLAN between nodes, nsm nsc with its monitor stream.
  run up --once --state-dir "$work/up"
fi

group() { ls "$work/maps/$1"-*.map 2>/dev/null | paste -sd, -; }
python3 "$here/order.py" "$nsm" "$here/hot-text.ld" \
  "$(group nsmgr)" "$(group forwarder)" "$(group nse)" "$(group registry)" \
  "$(group nsc),$(group bench)"
