#!/usr/bin/env python3
"""`make bench`, module size: where the bytes of the release `.wasm` go, by crate.

Reads an unstripped build (same profile, names kept) and sums the size of every function body
by the crate its name starts with (a generic function counts for the crate that defines it, e.g.
serde_json's parser instantiated for the configuration counts as serde_json), plus the data
segments. Usage: size.py UNSTRIPPED.wasm SHIPPED.wasm
"""
import collections
import re
import sys


def leb(data, i):
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def sections(data):
    i = 8
    while i < len(data):
        sid = data[i]
        size, i = leb(data, i + 1)
        yield sid, data[i:i + size]
        i += size


def name_of_section(body):
    n, i = leb(body, 0)
    return body[i:i + n].decode(), body[i + n:]


def function_sizes(data):
    imported, bodies, names, data_bytes = 0, [], {}, 0
    for sid, body in sections(data):
        if sid == 2:  # imports: functions among them come first in the index space
            count, i = leb(body, 0)
            for _ in range(count):
                for _ in range(2):
                    n, i = leb(body, i)
                    i += n
                kind = body[i]
                i += 1
                if kind == 0:
                    imported += 1
                    _, i = leb(body, i)
                elif kind == 1:
                    i += 1
                    flags, i = leb(body, i)
                    _, i = leb(body, i)
                    if flags & 1:
                        _, i = leb(body, i)
                elif kind == 2:
                    flags, i = leb(body, i)
                    _, i = leb(body, i)
                    if flags & 1:
                        _, i = leb(body, i)
                else:
                    i += 2
        elif sid == 10:
            count, i = leb(body, 0)
            for _ in range(count):
                size, i = leb(body, i)
                bodies.append(size)
                i += size
        elif sid == 11:
            data_bytes = len(body)
        elif sid == 0:
            title, rest = name_of_section(body)
            if title != "name":
                continue
            i = 0
            while i < len(rest):
                kind = rest[i]
                size, i = leb(rest, i + 1)
                if kind == 1:
                    count, j = leb(rest, i)
                    for _ in range(count):
                        index, j = leb(rest, j)
                        n, j = leb(rest, j)
                        names[index] = rest[j:j + n].decode(errors="replace")
                        j += n
                i += size
    return [(names.get(imported + k, "?"), size) for k, size in enumerate(bodies)], data_bytes


def crate(name):
    """The crate a symbol belongs to, from its mangled name (v0 `_R…` or legacy `_ZN…`)."""
    if name.startswith("_R"):
        # The first crate root, `C` with an optional disambiguator, then a length-prefixed name.
        for m in re.finditer(r"C(?:s[0-9A-Za-z]*_)?(\d+)", name):
            ident = name[m.end():m.end() + int(m.group(1))]
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ident):
                return ident
    m = re.match(r"_ZN(\d+)", name)
    if m:
        first = name[m.end():m.end() + int(m.group(1))]
        for code, text in (("$LT$", "<"), ("$GT$", ">"), ("$RF$", "&"), ("$BP$", "*"), ("$u20$", " "),
                           ("$C$", ","), ("..", "::")):
            first = first.replace(code, text)
        first = re.sub(r"^_?(<|&|mut |dyn |\*const |\*mut )+", "", first)
        # A blanket impl (`<T as alloc::string::ToString>`, `<[T] as …>`) counts for the trait.
        if re.match(r"(\[?[A-Z]\]?|\[[A-Z]; *[A-Z]\]) as ", first):
            first = first.split(" as ", 1)[1]
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", first)
        if m:
            return m.group(0)
    return "(C runtime and glue: malloc, memcpy, …)"


def main():
    unstripped, shipped = sys.argv[1], sys.argv[2]
    functions, data_bytes = function_sizes(open(unstripped, "rb").read())
    by_crate = collections.Counter()
    for name, size in functions:
        by_crate[crate(name)] += size
    by_crate["(read-only data)"] = data_bytes
    total = sum(by_crate.values())
    print(f"\nWhere the module's bytes go ({len(open(shipped, 'rb').read())} bytes shipped; "
          f"function bodies by crate, and data):\n")
    print("| crate | KB | share |")
    print("|---|---:|---:|")
    for name, size in by_crate.most_common(16):
        print(f"| {name} | {size / 1000:.1f} | {size / total * 100:.1f}% |")
    rest = total - sum(size for _, size in by_crate.most_common(16))
    print(f"| everything else | {rest / 1000:.1f} | {rest / total * 100:.1f}% |")


if __name__ == "__main__":
    main()
