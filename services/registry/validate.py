"""Static validation of a workflow script with Python's own ast; nothing of the script runs.

Reads {"code": "..."} as JSON on stdin (or one such object per line with --serve) and writes
{"errors": [{line, column, message}], "input_schema": ..., "output_schema": ...} per request.
"""
from __future__ import annotations

import ast
import json
import sys
from typing import Any

SCHEMA_TYPES = ("string", "number", "boolean", "object", "array")
SCHEMA_KEYS = ("type", "description", "required")


def _err(errors: list[dict[str, Any]], node: ast.AST | None, message: str) -> None:
    line = getattr(node, "lineno", 0) or 0
    col = getattr(node, "col_offset", -1)
    errors.append({"line": line, "column": col + 1 if col >= 0 else 0, "message": message})


def _returns_value(body: list[ast.stmt]) -> tuple[bool, list[ast.Return]]:
    """Finds the returns of a function body, not descending into nested functions or classes."""
    value_returns = False
    bare: list[ast.Return] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Return):
            if node.value is None or (isinstance(node.value, ast.Constant) and node.value.value is None):
                bare.append(node)
            else:
                value_returns = True
        stack.extend(ast.iter_child_nodes(node))
    return value_returns, bare


def _is_generator(body: list[ast.stmt]) -> bool:
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _check_execute(errors: list[dict[str, Any]], tree: ast.Module) -> None:
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "execute"]
    if not defs:
        _err(errors, None, "the script defines no module-level `def execute(ctx)`")
        return
    for extra in defs[1:]:
        _err(errors, extra, f"`execute` is defined more than once (first at line {defs[0].lineno}); keep exactly one")
    fn = defs[0]
    if isinstance(fn, ast.AsyncFunctionDef):
        _err(errors, fn, "`execute` must be a plain `def`, not `async def`: ctx calls are synchronous")
    args = fn.args
    positional = list(args.posonlyargs) + list(args.args)
    if len(positional) != 1 or args.vararg or args.kwarg or args.kwonlyargs:
        _err(errors, fn, f"`execute` must take exactly one positional parameter (ctx), it takes {len(positional)}"
             + (" plus *args/**kwargs/keyword-only parameters" if (args.vararg or args.kwarg or args.kwonlyargs) else ""))
    elif args.defaults:
        _err(errors, fn, "`execute`'s parameter must not have a default value")
    if _is_generator(fn.body):
        _err(errors, fn, "`execute` must return a value, not yield: use ctx.emit() to stream")
        return
    has_value, bare = _returns_value(fn.body)
    for node in bare:
        _err(errors, node, "`execute` must return a JSON-serialisable value, not a bare `return` or `return None`")
    if not has_value and not bare:
        _err(errors, fn, "`execute` never returns a value: every path ends without `return`")


def _check_workflow_context(errors: list[dict[str, Any]], tree: ast.Module) -> None:
    imported = False
    bound = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == "WorkflowContext" or alias.name == "*":
                    imported = True
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname == "WorkflowContext":
                    imported = True
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "WorkflowContext":
            bound = True
        elif isinstance(node, ast.Name) and node.id == "WorkflowContext" and isinstance(node.ctx, ast.Store):
            bound = True
    if imported or bound:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "WorkflowContext" and isinstance(node.ctx, ast.Load):
            _err(errors, node, "`WorkflowContext` is used but not imported: add `from shaker import WorkflowContext`")
            return
        if isinstance(node, ast.Constant) and node.value == "WorkflowContext":
            _err(errors, node, "`WorkflowContext` is used but not imported: add `from shaker import WorkflowContext`")
            return


def _schema(errors: list[dict[str, Any]], tree: ast.Module, name: str) -> Any:
    found = None
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            found = (node, value)
    if found is None:
        return None
    node, value = found
    try:
        schema = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError):
        _err(errors, node, f"{name} must be a literal dict (no names, calls or expressions)")
        return None
    if not isinstance(schema, dict):
        _err(errors, node, f"{name} must be a dict of {{field: {{type, description?, required?}}}}, not {type(schema).__name__}")
        return None
    ok = True
    for field, spec in schema.items():
        if not isinstance(field, str):
            _err(errors, node, f"{name}: field names must be strings, got {field!r}")
            ok = False
            continue
        if not isinstance(spec, dict):
            _err(errors, node, f"{name}[{field!r}] must be a dict with a `type`")
            ok = False
            continue
        unknown = [k for k in spec if k not in SCHEMA_KEYS]
        if unknown:
            _err(errors, node, f"{name}[{field!r}] has unknown keys {unknown}; allowed: type, description, required")
            ok = False
        if spec.get("type") not in SCHEMA_TYPES:
            _err(errors, node, f"{name}[{field!r}]['type'] must be one of {', '.join(SCHEMA_TYPES)}, got {spec.get('type')!r}")
            ok = False
        if "description" in spec and not isinstance(spec["description"], str):
            _err(errors, node, f"{name}[{field!r}]['description'] must be a string")
            ok = False
        if "required" in spec and not isinstance(spec["required"], bool):
            _err(errors, node, f"{name}[{field!r}]['required'] must be True or False")
            ok = False
    return schema if ok else None


def validate(code: str) -> dict[str, Any]:
    errors: list[dict[str, Any]] = []
    try:
        tree = ast.parse(code, filename="workflow.py")
    except SyntaxError as e:
        errors.append({"line": e.lineno or 0, "column": e.offset or 0, "message": f"syntax error: {e.msg}"})
        return {"errors": errors, "input_schema": None, "output_schema": None}
    except ValueError as e:  # source with NUL bytes
        return {"errors": [{"line": 0, "column": 0, "message": f"invalid source: {e}"}], "input_schema": None, "output_schema": None}
    _check_execute(errors, tree)
    _check_workflow_context(errors, tree)
    input_schema = _schema(errors, tree, "INPUT_SCHEMA")
    output_schema = _schema(errors, tree, "OUTPUT_SCHEMA")
    errors.sort(key=lambda e: (e["line"], e["column"]))
    return {"errors": errors, "input_schema": input_schema, "output_schema": output_schema}


def main() -> None:
    if "--serve" in sys.argv:
        for line in sys.stdin:
            try:
                result = validate(json.loads(line)["code"])
            except Exception as e:  # a bad request must not end the validator
                result = {"errors": [{"line": 0, "column": 0, "message": f"validator failed: {e}"}]}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
        return
    print(json.dumps(validate(json.load(sys.stdin)["code"])))


if __name__ == "__main__":
    main()
