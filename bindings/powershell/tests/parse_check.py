"""Parse check of PowerShell files with the tree-sitter PowerShell grammar.

No PowerShell runs on the machines that build quotagate, so the module's .ps1, .psm1
and .psd1 files are parsed with tree-sitter-powershell (pinned in
requirements-parse.txt); any ERROR or MISSING node fails the check. With a manifest
(.psd1), the type and format data (.ps1xml) beside it are checked too: well-formed XML
whose script blocks parse; and its FileList must name every file of its folder, and
only those, since the module is staged from that list.

    python parse_check.py FILE...
"""

import glob
import os
import re
import sys
import xml.etree.ElementTree as ElementTree

import tree_sitter
import tree_sitter_powershell


def problems(tree):
    """Yields (line, column, kind, text) for every ERROR or MISSING node."""
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            kind = "missing " + node.type if node.is_missing else "syntax error"
            text = node.text.decode("utf-8", "replace").splitlines()[0][:60] if node.text else ""
            yield node.start_point[0] + 1, node.start_point[1] + 1, kind, text
        if node.has_error:
            stack.extend(reversed(node.children))


def data_problems(parser, path):
    """Yields (line, column, kind, text) for a .ps1xml file: XML errors, then script block errors."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        yield e.position[0], e.position[1] + 1, "XML error", str(e)[:60]
        return
    for block in root.iter("ScriptBlock"):
        for line, column, kind, text in problems(parser.parse((block.text or "").encode("utf-8"))):
            yield 0, 0, "in a ScriptBlock: " + kind, text


def file_list_problems(manifest):
    """Yields (line, column, kind, text) for files of the manifest's folder that its
    FileList leaves out, and for names in it that are not files."""
    with open(manifest, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"\bFileList\s*=\s*@\((.*?)\)", text, re.S)
    if not match:
        yield 0, 0, "no FileList", ""
        return
    line = text.count("\n", 0, match.start()) + 1
    listed = set(re.findall(r"'([^']+)'", match.group(1)))
    folder = os.path.dirname(manifest)
    present = {
        os.path.relpath(os.path.join(d, name), folder).replace(os.sep, "/")
        for d, _, names in os.walk(folder)
        for name in names
    }
    for name in sorted(present - listed):
        yield line, 1, "not in FileList", name
    for name in sorted(listed - present):
        yield line, 1, "FileList names no file", name


def main(paths):
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    paths = list(paths)
    for manifest in [p for p in paths if p.endswith(".psd1")]:
        paths.extend(sorted(glob.glob(os.path.join(os.path.dirname(manifest), "*.ps1xml"))))
    failed = 0
    for path in paths:
        if path.endswith(".ps1xml"):
            found = sorted(data_problems(parser, path))
        else:
            with open(path, "rb") as f:
                source = f.read()
            found = sorted(problems(parser.parse(source)))
            if path.endswith(".psd1"):
                found += sorted(file_list_problems(path))
        if found:
            failed += 1
            for line, column, kind, text in found:
                print(f"{path}:{line}:{column}: {kind}: {text!r}")
        else:
            print(f"parsed {path}")
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
