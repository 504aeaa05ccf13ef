"""Parse check of PowerShell files with the tree-sitter PowerShell grammar.

No PowerShell runs on the machines that build quotagate, so the module's .ps1, .psm1
and .psd1 files are parsed with tree-sitter-powershell (pinned in
requirements-parse.txt); any ERROR or MISSING node fails the check.

    python parse_check.py FILE...
"""

import sys

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


def main(paths):
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    failed = 0
    for path in paths:
        with open(path, "rb") as f:
            source = f.read()
        found = sorted(problems(parser.parse(source)))
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
