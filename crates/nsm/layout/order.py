#!/usr/bin/env python3
"""Writes hot-text.ld from the function-entry maps of an instrumented `nsm` (see README.md).

usage: order.py [--pages NSM_RELEASE PAGES] NSM_INSTRUMENTED OUT.ld GROUP [GROUP...]
       order.py --mincore FILE PAGES      (the pages of FILE in the page cache, for --pages)
A GROUP is a comma-separated list of .map files (one component's processes). The functions the
first group ran come first, then those the second group added, and so on. Functions without
instrumentation (std's precompiled code, C) that instrumented functions call directly are added
with them, transitively. A function is named by a pattern that leaves out what changes with crate
versions, features and the toolchain (the hash of a legacy Rust symbol, the crate disambiguators of a
v0 one, LLVM's `.1234` suffixes) when that pattern matches only this function; the instances of a generic function share a
pattern, so they are named exactly (their hashes stay as long as the crates' metadata does)."""
import bisect
import collections
import re
import subprocess
import sys


def symbols(binary):
    syms = {}
    out = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        p = line.split()
        if len(p) == 4 and p[2] in "tTwW":
            addr, size = int(p[0], 16), int(p[1], 16)
            if addr not in syms or len(p[3]) < len(syms[addr][1]):
                syms[addr] = (size, p[3])
    return syms


def pattern(name):
    """`name` without what changes with crate versions, features and the toolchain."""
    name = re.sub(r"17h[0-9a-f]{16}E$", "17h????????????????E", name)
    if name.startswith("_R"):
        name = re.sub(r"Cs[0-9a-zA-Z]+_(?=\d)", "Cs*_", name)
    # LLVM numbers local functions that share a name (`.1234`, `.llvm.1234`).
    return re.sub(r"(\.llvm)?\.\d+$", ".*", name)


def selector(syms):
    """A pattern that matches one function of the binary names it whatever its hash; a generic
    function's pattern matches all its instances, so those are named exactly."""
    instances = collections.Counter(pattern(name) for _, name in syms.values())

    def select(name):
        p = pattern(name)
        return p if instances[p] == 1 else name

    return select


def touched_functions(binary, pages_file):
    """Selectors of the functions of `binary` on the file pages listed in `pages_file`."""
    syms = symbols(binary)
    select = selector(syms)
    load = []
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        p = line.split()
        if p and p[0] == "LOAD":
            load.append((int(p[1], 16), int(p[2], 16), int(p[4], 16)))
    spans = []
    with open(pages_file) as f:
        for page in (int(x) for x in f if x.strip()):
            off = page * 4096
            for o, v, size in load:
                if o <= off < o + size:
                    spans.append((v - o + off, v - o + off + 4096))
    names = set()
    starts = sorted(syms)
    for lo, hi in spans:
        k = max(bisect.bisect_right(starts, lo) - 1, 0)
        while k < len(starts) and starts[k] < hi:
            a = starts[k]
            if a + syms[a][0] > lo:
                names.add(select(syms[a][1]))
            k += 1
    return names


def mincore(path, out):
    """Writes the indexes of the pages of `path` that are in the page cache to `out`."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    vec = (ctypes.c_ubyte * ((size + 4095) // 4096))()
    if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    with open(out, "w") as f:
        f.writelines(f"{i}\n" for i, v in enumerate(vec) if v & 1)


def main():
    args = sys.argv[1:]
    if args[0] == "--mincore":
        mincore(args[1], args[2])
        return
    pages = None
    if args[0] == "--pages":
        # --pages RELEASE_BIN PAGES: the file pages of RELEASE_BIN (linked with the previous script)
        # that the components touched; functions there that no group names yet follow group 1.
        pages, args = (args[1], args[2]), args[3:]
    binary, out, groups = args[0], args[1], [[p for p in g.split(",") if p] for g in args[2:]]
    syms = symbols(binary)
    starts = sorted(syms)

    def function_at(addr):
        k = bisect.bisect_right(starts, addr) - 1
        if k < 0:
            return None
        s = starts[k]
        return s if addr < s + max(syms[s][0], 1) else None

    # Which functions are instrumented (call mcount) and whom each calls directly.
    instrumented, callees, cur = set(), collections.defaultdict(set), None
    header = re.compile(r"^([0-9a-f]+) <(.*)>:$")
    call = re.compile(r"^\s*[0-9a-f]+:\s+(?:call|jmp)\s+([0-9a-f]+) <([^>]*)>")
    dis = subprocess.Popen(["objdump", "-d", "--no-show-raw-insn", binary], stdout=subprocess.PIPE, text=True)
    for line in dis.stdout:
        m = header.match(line)
        if m:
            cur = int(m.group(1), 16)
            continue
        m = call.match(line)
        if m and cur is not None:
            if m.group(2).startswith("mcount"):
                instrumented.add(cur)
                continue
            target = int(m.group(1), 16)
            if function_at(target) == target != cur:
                callees[cur].add(target)
    dis.wait()

    placed, done = [], set()
    for i, maps in enumerate(groups):
        ran = set()
        for path in maps:
            with open(path, "rb") as f:
                data = f.read()
            for off in (j for j, b in enumerate(data) if b):
                fn = function_at(off * 16)
                if fn is not None:
                    ran.add(fn)
        added, todo = set(), list(ran | done)
        while todo:
            for c in callees.get(todo.pop(), ()):
                if c not in ran and c not in done and c not in added and c not in instrumented:
                    added.add(c)
                    todo.append(c)
        new = sorted((ran | added) - done)
        kib = lambda fs: sum(syms[f][0] for f in fs) // 1024
        print(f"group {i + 1}: ran {len(ran)} functions ({kib(ran)} KiB), "
              f"{len(added)} uninstrumented callees ({kib(added)} KiB), {len(new)} new ({kib(new)} KiB)",
              file=sys.stderr)
        placed.append(new)
        done |= set(new)

    select = selector(syms)
    named = [[select(syms[fn][1]) for fn in group] for group in placed]
    labels = [f"group {i + 1}" for i in range(len(named))]
    if pages:
        touched = touched_functions(*pages)
        known = {n for group in named for n in group}
        extra = sorted(n for n in touched if n not in known)
        print(f"pages: {len(touched)} functions on touched pages, {len(extra)} not in a group", file=sys.stderr)
        named.insert(1, extra)
        labels.insert(1, "on pages the first group's processes touched, not profiled")

    seen = set()
    with open(out, "w") as f:
        f.write("/* Generated by crates/nsm/layout/order.py (see README.md there): the functions the\n"
                "   components ran in a profile, placed before the rest of the code, grouped by component. */\n"
                "SECTIONS\n{\n  .text.hot :\n  {\n")
        for label, group in zip(labels, named):
            pats = []
            for p in group:
                if p not in seen:
                    seen.add(p)
                    pats.append(p)
            f.write(f"    /* {label}: {len(pats)} functions */\n")
            # Functions LLVM considers cold (#[cold], and what only they call) have their own prefix.
            names = (f"{prefix}{p}" for p in pats for prefix in (".text.", ".text.unlikely."))
            f.write("    *(" + "\n      ".join(names) + ")\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    print(f"{len(seen)} patterns in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
