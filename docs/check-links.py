#!/usr/bin/env python3
"""Checks the relative links of the user guide (docs/*.md); exits 1 on any broken one.

A link is broken when
- its file does not exist;
- it leaves docs/ (the built book has only docs/, so such a link is a 404 there: write
  the repository path as code instead, e.g. `crates/appkit/src/shutdown.rs`);
- it points to a page that SUMMARY.md does not list (mdBook does not build that page);
- its `#anchor` names no heading of the target page, with heading ids made the way
  mdBook makes them (lowercase; letters, digits, `-` and `_` kept; spaces become `-`;
  a repeated heading gets `-1`, `-2`, ...).

External links (http:, https:, mailto:) are not fetched. Links inside code are ignored.
Usage: python3 docs/check-links.py [DOCS_DIR]
"""

import os
import re
import sys

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ID = re.compile(r"\s*\{#([A-Za-z0-9_-]+)[^}]*\}\s*$")


def strip_code(lines):
    """Lines with fenced blocks blanked and inline code spans removed."""
    out, in_fence = [], False
    for line in lines:
        if FENCE.match(line):
            in_fence = not in_fence
            out.append("")
        elif in_fence:
            out.append("")
        else:
            out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return out


def heading_id(text):
    """The id mdBook gives a heading whose markdown text is `text`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]*>", "", text)  # inline HTML tags
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"&(lt|gt|amp|#39|quot);", "", text)
    text = text.replace("<", "").replace(">", "").replace("&", "")
    text = text.replace("'", "").replace('"', "")
    out = []
    for ch in text.strip():
        if ch.isalnum() or ch in "_-":
            out.append(ch.lower())
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def anchors(path, cache={}):
    if path not in cache:
        ids, seen, in_fence = set(), {}, False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if FENCE.match(line):
                    in_fence = not in_fence
                    continue
                m = None if in_fence else HEADING.match(line)
                if not m:
                    continue
                text = m.group(2)
                explicit = EXPLICIT_ID.search(text)
                if explicit:
                    ids.add(explicit.group(1))
                    continue
                base = heading_id(text)
                n = seen.get(base, 0)
                seen[base] = n + 1
                ids.add(base if n == 0 else f"{base}-{n}")
        cache[path] = ids
    return cache[path]


def main():
    docs = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))
    summary = os.path.join(docs, "SUMMARY.md")
    pages = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(docs)
        for name in names
        if name.endswith(".md")
    )
    listed = set()
    if os.path.exists(summary):
        with open(summary, encoding="utf-8") as f:
            for line in strip_code(f.read().splitlines()):
                for target in LINK.findall(line):
                    listed.add(os.path.normpath(os.path.join(docs, target.split("#")[0])))
    errors, checked = [], 0
    for page in pages:
        with open(page, encoding="utf-8") as f:
            lines = strip_code(f.read().splitlines())
        for lineno, line in enumerate(lines, 1):
            for target in LINK.findall(line):
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                    continue  # http:, https:, mailto:, ...
                checked += 1
                where = f"{os.path.relpath(page)}:{lineno}: ({target})"
                file_part, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
                if not (dest == docs or dest.startswith(docs + os.sep)):
                    errors.append(f"{where} points outside docs/: a 404 in the built book")
                    continue
                if not os.path.exists(dest):
                    errors.append(f"{where} no such file")
                    continue
                if dest.endswith(".md") and os.path.exists(summary) and dest not in listed and page != summary:
                    errors.append(f"{where} page not listed in SUMMARY.md")
                if anchor and dest.endswith(".md") and anchor not in anchors(dest):
                    errors.append(f"{where} no heading with id `{anchor}` in {os.path.relpath(dest)}")
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check-links: {len(errors)} broken of {checked} relative links", file=sys.stderr)
        return 1
    print(f"check-links: {checked} relative links in {len(pages)} pages, all resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
