#!/usr/bin/env python3
"""Writes hot-text.ld from the function-entry maps of an instrumented `nsm` (see README.md).

usage: order.py NSM_INSTRUMENTED OUT.ld GROUP [GROUP...]
       order.py --mincore FILE PAGES      (the pages of FILE in the page cache, for --refresh)
       order.py --refresh NSM_RELEASE MAP PAGES SCRIPT
                                          (moves what NSM_RELEASE, linked with SCRIPT and the
                                          linker map MAP, touched to the front; no profile)
       order.py --probe SCRIPT PROBE.ld   (SCRIPT with one page per selector: a --refresh of a
                                          build linked with it is exact)
A GROUP is a comma-separated list of .map files (one component's processes). The functions the
first group ran come first, then those the second group added, and so on. Functions without
instrumentation (std's precompiled code, C) that instrumented functions call directly are added
with them, transitively. How functions are named: `selector`."""
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
    function's pattern matches all its instances, so those are named exactly, except for LLVM's
    numbers: the local copies of one function (`foo.1234`, `foo.1240`) are renumbered by any code
    change anywhere in the program, so all copies are named (`foo.*`)."""
    instances = collections.Counter(pattern(name) for _, name in syms.values())

    def select(name):
        p = pattern(name)
        return p if instances[p] == 1 else re.sub(r"(\.llvm)?\.\d+$", ".*", name)

    return select


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


def load_segments(binary):
    """(file offset, virtual address, file size) of each LOAD segment of `binary`."""
    load = []
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        p = line.split()
        if p and p[0] == "LOAD":
            load.append((int(p[1], 16), int(p[2], 16), int(p[4], 16)))
    return load


def page_spans(binary, pages_file):
    """The address ranges of `binary` of the file pages listed in `pages_file`."""
    spans, load = [], load_segments(binary)
    with open(pages_file) as f:
        for page in (int(x) for x in f if x.strip()):
            off = page * 4096
            for o, v, size in load:
                if o <= off < o + size:
                    spans.append((v - o + off, v - o + off + 4096))
    return spans


def map_input_sections(map_file):
    """The input sections of an lld `-Map` file, (address, size, file, section), by output section."""
    sections, current = {}, None
    line_re = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+( +)(\S.*)$")
    with open(map_file) as f:
        for line in f:
            m = line_re.match(line)
            if not m:
                continue
            indent, rest = len(m.group(3)), m.group(4)
            if indent == 1:
                current = rest
            elif indent == 9 and current is not None and rest.endswith(")"):
                file, _, section = rest.rpartition(":(")
                entry = (int(m.group(1), 16), int(m.group(2), 16), file, section[:-1])
                sections.setdefault(current, []).append(entry)
    return sections


def file_selector(file, section):
    """An input-section description for `section` of a C or assembly object, by archive and
    member with the build hashes left out (`*libc.a:malloc.o(.text)`, `*libaws_lc_sys-*.rlib:
    *-aesni-gcm-avx512.o(.text)`), or None for a file that is not an archive member."""
    m = re.match(r"^(.*)\((.*)\)$", file)
    if not m:
        return None
    archive = re.sub(r"-[0-9a-f]{16}(?=\.rlib$)", "-*", m.group(1).rsplit("/", 1)[-1])
    member = re.sub(r"^[0-9a-f]{16}-", "*-", m.group(2))
    return f"*{archive}:{member}({section})"


def read_script(path):
    """The code groups of a script written by this tool: [(label, [selector, ...])]."""
    groups = []
    with open(path) as f:
        for line in f:
            t = line.strip()
            m = re.match(r"^/\* (.*): \d+ (?:functions|selectors) \*/$", t)
            if m:
                groups.append((m.group(1), []))
                continue
            if t.startswith(".rodata.hot"):
                break
            if not groups or not t or t in ("}", "{") or t.startswith(("SECTIONS", ".text.hot", "INSERT")):
                continue
            t = t.removeprefix("*(").removesuffix(")") if t.startswith("*(") or t.endswith(")") and "(" not in t else t
            if t.startswith(".text.unlikely."):
                continue
            groups[-1][1].append(t.removeprefix(".text.") if t.startswith(".text.") else t)
    return groups


def write_selectors(f, selectors, sections, align):
    """Writes `selectors` into the output section being written to `f`: with `align`, each on a page
    of its own; else the input sections `sections(selector)` names in one list, then the C and
    assembly objects' sections by archive member."""
    if align:
        f.write(align.join(f"    {p}" if "(" in p else f"    *({' '.join(sections(p))})" for p in selectors) + align)
        return
    names = [n for p in selectors if "(" not in p for n in sections(p)]
    if names:
        f.write("    *(" + "\n      ".join(names) + ")\n")
    for p in selectors:
        if "(" in p:
            f.write(f"    {p}\n")


def write_script(out, labels, named, rodata=(), probe=False):
    """Writes the groups of selectors `named` under `labels`, and the read-only data sections
    `rodata` (section names or archive-member descriptions) into `.rodata.hot`; returns how many
    selectors it wrote. With `probe`, every selector starts a page of its own, so that the pages a
    process touches name exactly what it used (--probe)."""
    seen = set()
    align = "\n    . = ALIGN(4096);\n" if probe else None
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
            f.write(f"    /* {label}: {len(pats)} selectors */\n")
            # Functions LLVM considers cold (#[cold], and what only they call) have their own prefix.
            write_selectors(f, pats, lambda p: (f".text.{p}", f".text.unlikely.{p}"), align)
        f.write("  }\n}\nINSERT BEFORE .text;\n")
        if rodata:
            # Constants the NSMgr read, ahead of the rest (strings merged across the program are one
            # section of the linker's own and stay where they are).
            f.write(f"SECTIONS\n{{\n  .rodata.hot :\n  {{\n    /* {REFRESHED}: {len(rodata)} sections */\n")
            write_selectors(f, rodata, lambda r: (r,), align)
            f.write("  }\n}\nINSERT BEFORE .rodata;\n")
    return len(seen) + len(rodata)


REFRESHED = "what a release NSMgr touched from start-up through its first cycles (--refresh)"


def refresh(binary, map_file, pages_file, script):
    """Reorders `script` by what `binary` (linked with it, `-Map` written to `map_file`) touched:
    the code on the pages listed in `pages_file` moves to a first group, in its current order, then
    the cold code found there. The rest keeps its groups. The profile ranks functions by whether a
    component ran them at all, so the NSMgr's group also holds code that only load, other callers or
    error paths run, interleaved with what an idle NSMgr keeps using; this packs the latter. It needs
    no profile, so it also catches up with code that changed since the last one."""
    select = selector(symbols(binary))
    spans = page_spans(binary, pages_file)
    inputs = map_input_sections(map_file)

    def on_pages(output, kind):
        secs = sorted(inputs.get(output, []))
        starts, found = [s[0] for s in secs], []
        for lo, hi in spans:
            k = max(bisect.bisect_right(starts, lo) - 1, 0)
            while k < len(secs) and secs[k][0] < hi:
                addr, size, file, section = secs[k]
                if addr + size > lo and size:
                    if file.endswith(".rcgu.o") and kind == "text" and section.startswith(".text."):
                        found.append((addr, select(section.removeprefix(".text.").removeprefix("unlikely."))))
                    elif file.endswith(".rcgu.o") and kind == "rodata" and section.startswith(".rodata."):
                        # Statics by their hash-free name; LLVM's anonymous constants (`..Lanon.<crate
                        # hash>.<n>`) share a prefix, so exactly.
                        symbolic = section.startswith((".rodata._ZN", ".rodata._R"))
                        found.append((addr, pattern(section) if symbolic else section))
                    elif d := file_selector(file, section):
                        found.append((addr, d))
                k += 1
        return list(dict.fromkeys(sel for _, sel in sorted(found)))

    hot, cold = on_pages(".text.hot", "text"), on_pages(".text", "text")
    rodata = list(dict.fromkeys(on_pages(".rodata.hot", "rodata") + on_pages(".rodata", "rodata")))
    groups = read_script(script)
    if len(groups) > 1 and groups[0][0] == REFRESHED:
        _, earlier = groups.pop(0)
        groups[0] = (groups[0][0], earlier + groups[0][1])
    groups.insert(0, (REFRESHED, hot + cold))
    print(f"refresh: {len(hot)} hot and {len(cold)} cold code selectors, {len(rodata)} read-only data "
          "sections on touched pages", file=sys.stderr)
    n = write_script(script, [g[0] for g in groups], [g[1] for g in groups], rodata)
    print(f"{n} selectors in {script}", file=sys.stderr)


def read_rodata(path):
    """The `.rodata.hot` selectors of a script written by this tool."""
    rodata, inside = [], False
    with open(path) as f:
        for line in f:
            t = line.strip()
            if t.startswith(".rodata.hot"):
                inside = True
                continue
            if not inside or not t or t[0] in "{}/." and not t.startswith(".rodata.") or t.startswith("INSERT"):
                continue
            rodata.append(t.removeprefix("*(").removesuffix(")") if t.startswith("*(") or "(" not in t else t)
    return rodata


def probe(script, out):
    """Writes `out`: `script` with each of its selectors on a page of its own. A build linked with it
    is for measuring only (its code is several times larger)."""
    groups = read_script(script)
    write_script(out, [g[0] for g in groups], [g[1] for g in groups], read_rodata(script), probe=True)


def main():
    args = sys.argv[1:]
    if args[0] == "--probe":
        probe(args[1], args[2])
        return
    if args[0] == "--mincore":
        mincore(args[1], args[2])
        return
    if args[0] == "--refresh":
        refresh(*args[1:5])
        return
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
    n = write_script(out, labels, named)
    print(f"{n} selectors in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
