#!/usr/bin/env bash
# Regenerates hot-text.ld (see README.md).
#
#   generate.sh [--profile] [--rounds N]     (as root)
#
# --profile: pass 1 first. Builds `nsm` with function-entry instrumentation in its own target
#    directory, runs the components under a workload with the mcount.c recorder preloaded, and
#    writes the functions each one ran, NSMgr first. Needs RUSTC_BOOTSTRAP for -Z instrument-mcount
#    and about two release builds of time.
# Then N refresh rounds (default 2), each a release build linked with a probe script (every
#    selector of hot-text.ld on a page of its own) and `nsm bench mesh` with the NSMgr started from
#    a copy on a loop device without readahead, so only the pages the NSMgr touches are ever read.
#    What it touched moves to the front of hot-text.ld, exactly, and cold code it touched joins it.
# Last, a release build with the new script and the figure to compare (`nsm bench mesh`).
# Needs gcc, python3, objdump, nm, readelf, losetup, mkfs.ext4 and mount.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
profile=false
rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=true ;;
    --rounds) rounds="$2"; shift ;;
    *) echo "usage: $0 [--profile] [--rounds N]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "$0: needs root (a loop device for the page measurements)" >&2; exit 2; }
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

if $profile; then
  # -Z instrument-mcount is a nightly flag: RUSTC_BOOTSTRAP lets the pinned stable compiler take it
  # for this build only. Legacy mangling as in the release build (nightly defaults to v0).
  (cd "$root" && RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-Z instrument-mcount -Z unstable-options -C symbol-mangling-version=legacy" \
    NSM_DEFAULT_LAYOUT=1 CARGO_TARGET_DIR="$target" cargo build --release -p nsm)
  instrumented="$target/release/nsm"
  gcc -O2 -fPIC -shared -o "$work/libmcount.so" "$here/mcount.c"
  # Start-up, registration, Request+Close at several concurrencies, held connections, shutdown;
  # also kernel forwarders, VXLAN between nodes and nsm nsc with its monitor stream.
  workload() {
    "$@" bench mesh --concurrency 1,8,32 --duration 10s --hold 200
    "$@" bench mesh --insecure --concurrency 1,8 --duration 5s
    "$@" up --once --state-dir "$(mktemp -d "$work/up.XXXXXX")"
  }
  mkdir -p "$work/maps"
  (cd "$work" && workload env LD_PRELOAD="$work/libmcount.so" MCOUNT_DIR="$work/maps" "$instrumented")
  group() { ls "$work/maps/$1"-*.map 2>/dev/null | paste -sd, -; }
  groups=("$(group nsmgr)" "$(group forwarder)" "$(group nse)" "$(group registry)" "$(group nsc),$(group bench)")
  python3 "$here/order.py" "$instrumented" "$here/hot-text.ld" "${groups[@]}"
fi

truncate -s 1G "$work/pages.img"
mkfs.ext4 -q -F "$work/pages.img"
loop="$(losetup -f --show "$work/pages.img")"
echo 0 >"/sys/block/$(basename "$loop")/queue/read_ahead_kb"
mkdir "$work/mnt"
release="$root/target/release/nsm"

for round in $(seq 1 "$rounds"); do
  python3 "$here/order.py" --probe "$here/hot-text.ld" "$work/probe.ld"
  (cd "$root" && NSM_LAYOUT_SCRIPT="$work/probe.ld" NSM_LAYOUT_MAP="$work/probe.map" \
    cargo build --release -p nsm)
  mount "$loop" "$work/mnt"
  cp "$release" "$work/mnt/nsm"
  umount "$work/mnt" # the copy leaves the page cache with the mount
  mount "$loop" "$work/mnt"
  python3 "$here/order.py" --mincore "$work/mnt/nsm" "$work/pages.txt"
  if [ -s "$work/pages.txt" ]; then
    # Another mount namespace (`ip netns exec` of a test running meanwhile) keeps the file system alive.
    echo "the copy is still in the page cache; run again when no other mount namespace holds $work" >&2
    exit 1
  fi
  # Start-up and registration, then Request+Close with one and with eight clients.
  (cd "$work" && "$release" bench mesh --nsmgr-exe "$work/mnt/nsm" --concurrency 1,8 --cycles 500)
  python3 "$here/order.py" --mincore "$work/mnt/nsm" "$work/pages.txt"
  python3 "$here/order.py" --refresh "$work/mnt/nsm" "$work/probe.map" "$work/pages.txt" "$here/hot-text.ld"
  umount "$work/mnt"
  echo "round $round done" >&2
done

(cd "$root" && cargo build --release -p nsm)
(cd "$work" && "$release" bench mesh --concurrency 1 --cycles 300)
echo "commit crates/nsm/layout/hot-text.ld with before/after figures (BENCHMARKS.md)" >&2
