"""What a Python operator's output depends on besides its script: the interpreter's version and
the versions of the packages the script imports (read from the interpreter that will run it).
Also checks, without running the script, that it parses and defines the function.

Usage: python -c <this file> SCRIPT FUNCTION; prints one JSON object: {"python": …,
"packages": {name: version}} or {"error": message}.
"""

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys


def top_level_names(tree):
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        else:
            # Names bound under `if`/`try` at the top level count too.
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(inner.name)
                elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
    return names


def imported_modules(tree):
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def main():
    script, function = sys.argv[1], sys.argv[2]
    base = os.path.basename(script)
    try:
        tree = ast.parse(open(script, "rb").read(), filename=script)
    except SyntaxError as error:
        return {"error": f"{base}, line {error.lineno}: SyntaxError: {error.msg}"}
    defined = top_level_names(tree)
    if function not in defined:
        return {"error": f"{base} defines no function `{function}` (it defines: {', '.join(sorted(defined)) or 'nothing'})"}

    # pyarrow carries the batches in and out, so its version is part of every result.
    modules = imported_modules(tree) | {"pyarrow"}
    distributions = importlib.metadata.packages_distributions()
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    packages = {}
    for module in sorted(modules):
        if module in sys.stdlib_module_names or module == "__future__":
            continue  # the interpreter's version covers them
        names = distributions.get(module)
        if names:
            for name in names:
                packages[name.lower()] = importlib.metadata.version(name)
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            # A module of the user's, beside the script: by its content.
            digest = hashlib.blake2b(open(spec.origin, "rb").read(), digest_size=8).hexdigest()
            packages[f"{module} (module)"] = digest
        else:
            packages[module] = "not installed"
    version = ".".join(str(v) for v in sys.version_info[:3])
    return {"python": f"{version} ({sys.implementation.name})", "packages": packages}


print(json.dumps(main()))
