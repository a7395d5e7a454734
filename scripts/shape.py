#!/usr/bin/env python3
"""Holds the shape ARCHITECTURE.md describes: no import cycle between the
top-level modules of a crate, no source file over 600 lines and no function
over 120 lines outside tests.

    python3 scripts/shape.py          # report and exit 1 on any breach
    python3 scripts/shape.py --list   # also print the longest files/functions

A module is a file or directory directly under a crate's src/; an arrow A -> B
is any `crate::B` (or `super::B` from A's top level) written in A. Lines of a
`#[cfg(test)]` module at the end of a file do not count towards its size, and
functions inside it are not measured.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["core", "cli", "proxy", "mcp", "sdk-common", "sdk-python", "sdk-node"]
MAX_FILE = 600
MAX_FN = 120


def strip_code(text):
    """The text with comments, strings and char literals blanked (newlines
    kept), so braces and `crate::` inside them are not counted."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_start(code):
    """Line index where a file's trailing `#[cfg(test)] mod ... {` begins."""
    lines = code.split("\n")
    for idx, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and idx + 1 < len(lines) and re.match(r"\s*(pub(\([a-z]+\))? )?mod \w+\s*\{", lines[idx + 1]):
            return idx
    return len(lines)


def functions(code, limit_line):
    """(name, first line, length in lines) of every fn body before limit_line."""
    found = []
    for m in re.finditer(r"\bfn\s+(\w+)", code):
        start = code.count("\n", 0, m.start())
        if start >= limit_line:
            break
        # the body starts at the first `{` after the signature, unless a `;` comes first
        j = m.end()
        depth_paren = 0
        while j < len(code):
            ch = code[j]
            if ch in "([<":
                depth_paren += 1
            elif ch in ")]>":
                depth_paren -= 1
            elif ch == ";" and depth_paren <= 0:
                j = -1
                break
            elif ch == "{" and depth_paren <= 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        depth, k = 0, j
        while k < len(code):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        end = code.count("\n", 0, k)
        found.append((m.group(1), start + 1, end - start + 1))
    return found


def module_of(src, path):
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    listing = "--list" in sys.argv
    breaches, longest_files, longest_fns = [], [], []
    for crate in CRATES:
        src = ROOT / crate / "src"
        if not src.is_dir():
            continue
        graph = {}
        for path in sorted(src.rglob("*.rs")):
            text = path.read_text()
            code = strip_code(text)
            limit = test_start(code)
            rel = path.relative_to(ROOT)
            longest_files.append((limit, str(rel)))
            if limit > MAX_FILE:
                breaches.append(f"{rel}: {limit} lines (at most {MAX_FILE} outside tests)")
            for name, line, length in functions(code, limit):
                longest_fns.append((length, f"{rel}:{line} {name}"))
                if length > MAX_FN:
                    breaches.append(f"{rel}:{line}: fn {name} is {length} lines (at most {MAX_FN})")
            me = module_of(src, path)
            if me in ("lib", "main"):
                continue
            deps = graph.setdefault(me, set())
            for m in re.finditer(r"\bcrate::(\w+)", code[: sum(len(x) + 1 for x in code.split("\n")[:limit])]):
                if m.group(1) != me:
                    deps.add(m.group(1))
            if path.parent == src:  # super:: from a top-level module is the crate root
                continue
        for comp in cycles(graph):
            breaches.append(f"{crate}: import cycle between modules {', '.join(comp)}")
    if listing:
        print("longest files:")
        for n, name in sorted(longest_files, reverse=True)[:10]:
            print(f"  {n:5} {name}")
        print("longest functions:")
        for n, name in sorted(longest_fns, reverse=True)[:10]:
            print(f"  {n:5} {name}")
    for b in breaches:
        print(b)
    if breaches:
        print(f"shape: {len(breaches)} breach(es); see ARCHITECTURE.md", file=sys.stderr)
        return 1
    print("shape: no import cycle, no file over 600 lines, no function over 120 lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
