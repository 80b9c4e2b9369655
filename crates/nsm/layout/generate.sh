#!/usr/bin/env bash
# Regenerates hot-text.ld (see README.md), in two passes.
# 1. Builds `nsm` with function-entry instrumentation in its own target directory, runs the
#    components under a workload with the mcount.c recorder preloaded, and writes the functions each
#    one ran, NSMgr first.
# 2. As root: builds the release `nsm` with that script and runs `nsm bench mesh` with the NSMgr
#    started from a copy on a loop device without readahead, so only the pages the NSMgr touches
#    are ever read. The functions on those pages that pass 1 could not see (std's precompiled code
#    called through trait objects, C, code the profile missed) follow the NSMgr's group.
# Needs gcc, python3, objdump, nm; pass 2 also losetup, mkfs.ext4 and mount. Takes about two
# release builds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${LAYOUT_TARGET_DIR:-$root/target/layout}"
work="$(mktemp -d /tmp/nsm-layout.XXXXXX)"
loop=""
cleanup() {
  if [ -n "$loop" ]; then
    umount "$work/mnt" 2>/dev/null || true
    losetup -d "$loop" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# -Z instrument-mcount is a nightly flag: RUSTC_BOOTSTRAP lets the pinned stable compiler take it for
# this build only. Legacy mangling as in the release build (nightly defaults to v0).
(cd "$root" && RUSTC_BOOTSTRAP=1 \
  RUSTFLAGS="-Z instrument-mcount -Z unstable-options -C symbol-mangling-version=legacy" \
  NSM_DEFAULT_LAYOUT=1 CARGO_TARGET_DIR="$target" cargo build --release -p nsm)
instrumented="$target/release/nsm"
gcc -O2 -fPIC -shared -o "$work/libmcount.so" "$here/mcount.c"

# Start-up, registration, Request+Close at several concurrencies, held connections, shutdown; as root
# also kernel forwarders, VXLAN between nodes and nsm nsc with its monitor stream.
workload() {
  "$@" bench mesh --concurrency 1,8,32 --duration 10s --hold 200
  "$@" bench mesh --insecure --concurrency 1,8 --duration 5s
  if [ "$(id -u)" = 0 ]; then
    "$@" up --once --state-dir "$(mktemp -d "$work/up.XXXXXX")"
  fi
}
mkdir -p "$work/maps"
(cd "$work" && workload env LD_PRELOAD="$work/libmcount.so" MCOUNT_DIR="$work/maps" "$instrumented")

group() { ls "$work/maps/$1"-*.map 2>/dev/null | paste -sd, -; }
groups=("$(group nsmgr)" "$(group forwarder)" "$(group nse)" "$(group registry)" "$(group nsc),$(group bench)")
python3 "$here/order.py" "$instrumented" "$here/hot-text.ld" "${groups[@]}"
[ "$(id -u)" = 0 ] || { echo "not root: pass 2 skipped" >&2; exit 0; }

(cd "$root" && cargo build --release -p nsm)
truncate -s 512M "$work/pages.img"
mkfs.ext4 -q -F "$work/pages.img"
loop="$(losetup -f --show "$work/pages.img")"
echo 0 >"/sys/block/$(basename "$loop")/queue/read_ahead_kb"
mkdir "$work/mnt"
mount "$loop" "$work/mnt"
cp "$root/target/release/nsm" "$work/mnt/nsm"
umount "$work/mnt" # the copy leaves the page cache with the mount
mount "$loop" "$work/mnt"
python3 "$here/order.py" --mincore "$work/mnt/nsm" "$work/pages.txt"
if [ -s "$work/pages.txt" ]; then
  # Another mount namespace (`ip netns exec` of a test running meanwhile) keeps the file system alive.
  echo "the copy is still in the page cache; run again when no other mount namespace holds $work" >&2
  exit 1
fi
(cd "$work" && "$root/target/release/nsm" bench mesh --nsmgr-exe "$work/mnt/nsm" \
  --concurrency 1,8,32 --duration 10s --hold 200)
python3 "$here/order.py" --mincore "$work/mnt/nsm" "$work/pages.txt"
python3 "$here/order.py" --pages "$work/mnt/nsm" "$work/pages.txt" "$instrumented" "$here/hot-text.ld" "${groups[@]}"
