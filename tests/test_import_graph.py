"""keras_cmt's modules import each other without cycles, counting imports inside functions too (a deferred import
that would be circular at module level is still a cycle in the design)."""

import ast
import pathlib


PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_cmt"


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("keras_cmt",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name, path, modules):
    """The keras_cmt modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) - {"keras_cmt"} for name, path in modules.items()}
    graph["keras_cmt"] = set()  # the package's __init__ only re-exports; nothing below it imports it back
    visiting, done, cycles = [], set(), []

    def visit(node):
        if node in done:
            return
        if node in visiting:
            cycles.append(visiting[visiting.index(node) :] + [node])
            return
        visiting.append(node)
        for child in sorted(graph[node]):
            visit(child)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_the_package_root():
    """Modules import what they use (keras_cmt.variants, ...), not `import keras_cmt` for its re-exports, which
    would make every module depend on every other; the command line and the training scripts may."""
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        if name in ("keras_cmt", "keras_cmt.cli", "keras_cmt.__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(alias.name == "keras_cmt" for alias in node.names):
                offenders.append(name)
    assert not offenders, offenders
