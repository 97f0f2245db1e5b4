#!/usr/bin/env python3
"""Checks the architecture rules of src/ (docs/DESIGN.md section 4, "Architecture"):

  1. no cycle among the folders' #include edges (a folder is a directory of
     src/ with its files directly in it: backend/cpu is its own folder);
  2. models reach hardware only through backend/backend.h: no folder
     outside backend/ includes a backend's own headers (backend/cpu, ...);
  3. no function in src/ longer than --max-lines lines (default 150);
  4. only src/cli reads the environment (getenv), and nothing in src/ runs
     a shell (system, popen).

Prints the folder edges (--edges), every cycle and every long function, and
exits 1 when it found any. Reads files only; run by ctest (layout_check).
"""
import argparse
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_edges(src):
    edges = {}
    for root, _, files in os.walk(src):
        here = os.path.relpath(root, src)
        for f in files:
            if not f.endswith((".c", ".h", ".cu", ".cuh")):
                continue
            with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            for inc in INCLUDE.findall(text):
                # includes are written from src/ ("model/model.h"); a bare
                # name is a file beside this one
                target = os.path.dirname(inc) if "/" in inc else here
                if not os.path.exists(os.path.join(src, inc)):
                    continue  # generated or system header
                if target != here:
                    edges.setdefault(here, {}).setdefault(target, []).append(f"{f}: {inc}")
    return edges


def find_cycles(edges):
    """Every elementary cycle found by DFS from each node (small graph)."""
    cycles, seen = [], set()

    def dfs(start, node, path):
        for nxt in edges.get(node, {}):
            if nxt == start:
                cyc = path[:]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cyc + [start])
            elif nxt not in path and nxt > start:
                dfs(start, nxt, path + [nxt])

    for n in sorted(edges):
        dfs(n, n, [n])
    return cycles


def strip_c(text):
    """Blanks comments, strings and char literals, keeping newlines."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j]) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


FUNC_HEAD = re.compile(r"([A-Za-z_]\w*)\s*\([^;{}]*\)\s*$", re.S)


def long_functions(src, max_lines):
    found = []
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith((".c", ".cu")):
                continue
            path = os.path.join(root, f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = strip_c(fh.read())
            depth, i = 0, 0
            while i < len(text):
                ch = text[i]
                if ch == "{":
                    if depth == 0:
                        head = text[max(0, i - 400):i]
                        m = FUNC_HEAD.search(head)
                        name = m.group(1) if m else None
                        if name in ("if", "for", "while", "switch"):
                            name = None
                        start = text.count("\n", 0, i)
                        open_at = i
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0 and name:
                        end = text.count("\n", 0, i)
                        lines = end - start + 1
                        if lines > max_lines:
                            found.append((os.path.relpath(path, os.path.dirname(src)), start + 1, name, lines))
                i += 1
    return found


def environment_and_shell(src):
    found = []
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith((".c", ".h", ".cu")):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = strip_c(fh.read())
            for m in re.finditer(r"\b(getenv|secure_getenv|system|popen)\s*\(", text):
                line = text.count("\n", 0, m.start()) + 1
                if m.group(1).endswith("getenv"):
                    if not rel.startswith("cli" + os.sep):
                        found.append((rel, line, "environment read outside src/cli"))
                else:
                    found.append((rel, line, f"shell run ({m.group(1)})"))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    ap.add_argument("--max-lines", type=int, default=150)
    ap.add_argument("--edges", action="store_true", help="print every folder edge")
    a = ap.parse_args()
    src = os.path.normpath(a.src)
    edges = folder_edges(src)
    if a.edges:
        for s in sorted(edges):
            for t in sorted(edges[s]):
                print(f"{s} -> {t}  ({len(edges[s][t])} includes, e.g. {edges[s][t][0]})")
    bad = 0
    for cyc in find_cycles(edges):
        bad += 1
        print("include cycle: " + " -> ".join(cyc))
        for s, t in zip(cyc, cyc[1:]):
            print(f"    {s} -> {t}: {', '.join(edges[s][t][:3])}")
    for s in sorted(edges):
        for t in sorted(edges[s]):
            if t.startswith("backend/") and not s.startswith("backend"):
                bad += 1
                print(f"backend reached around backend.h: {s} -> {t}: {', '.join(edges[s][t][:3])}")
    for path, line, what in environment_and_shell(src):
        bad += 1
        print(f"{what}: {path}:{line}")
    for path, line, name, n in long_functions(src, a.max_lines):
        bad += 1
        print(f"long function: {path}:{line} {name}() is {n} lines (limit {a.max_lines})")
    print(f"check_layout: {len(edges)} folders with outgoing edges, "
          f"{sum(len(v) for v in edges.values())} edges, {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
