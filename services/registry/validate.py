"""Static validation of a workflow script with Python's own ast; nothing of the script runs.

Reads {"code": "..."} as JSON on stdin (or one such object per line with --serve) and writes
{"errors": [{line, column, message}], "input_schema": ..., "output_schema": ...} per request.
"""
from __future__ import annotations

import ast
import json
import re
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


def _annotation_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every annotation of the script: string annotations name types too."""
    out: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    out.append(arg.annotation)
            if node.returns is not None:
                out.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            out.append(node.annotation)
    return out


def _check_workflow_context(errors: list[dict[str, Any]], tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if any((a.asname or a.name) == "WorkflowContext" or a.name == "*" for a in node.names):
                return
        elif isinstance(node, ast.Import):
            if any(a.asname == "WorkflowContext" for a in node.names):
                return
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "WorkflowContext":
            return
        elif isinstance(node, ast.Name) and node.id == "WorkflowContext" and isinstance(node.ctx, ast.Store):
            return
    uses: list[ast.AST] = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "WorkflowContext"]
    for annotation in _annotation_nodes(tree):
        for n in ast.walk(annotation):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.search(r"\bWorkflowContext\b", n.value):
                uses.append(n)
    if uses:
        first = min(uses, key=lambda n: (n.lineno, n.col_offset))
        _err(errors, first, "`WorkflowContext` is used but not imported: add `from shaker import WorkflowContext`")


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _schema(errors: list[dict[str, Any]], tree: ast.Module, name: str) -> Any:
    """Checks a module-level NAME = {field: {type, description?, required?}} literal, pointing at each bad part."""
    found = None
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if value is not None and any(isinstance(t, ast.Name) and t.id == name for t in targets):
            found = value
    if found is None:
        return None
    shape = "{field: {'type': ..., 'description': ..., 'required': ...}}"
    if not isinstance(found, ast.Dict):
        ok, value = _literal(found)
        what = type(value).__name__ if ok else "an expression"
        _err(errors, found, f"{name} must be a literal dict {shape}, not {what}")
        return None
    schema: dict[str, Any] = {}
    ok_all = True
    for key_node, spec_node in zip(found.keys, found.values):
        if key_node is None:  # {**other}
            _err(errors, spec_node, f"{name} must be a literal dict: `**` unpacking is not allowed")
            ok_all = False
            continue
        ok, field = _literal(key_node)
        if not ok or not isinstance(field, str):
            _err(errors, key_node, f"{name}: field names must be literal strings")
            ok_all = False
            continue
        label = f"{name}[{field!r}]"
        if not isinstance(spec_node, ast.Dict):
            _err(errors, spec_node, f"{label} must be a literal dict with a 'type', e.g. {{'type': 'string'}}")
            ok_all = False
            continue
        spec: dict[str, Any] = {}
        ok_field = True
        has_type = False
        for k_node, v_node in zip(spec_node.keys, spec_node.values):
            ok_k, k = _literal(k_node) if k_node is not None else (False, None)
            has_type = has_type or (ok_k and k == "type")
            if not ok_k or k not in SCHEMA_KEYS:
                shown = repr(k) if ok_k else "`**`"
                _err(errors, k_node or v_node, f"{label} has an unknown key {shown}; allowed: type, description, required")
                ok_field = False
                continue
            ok_v, v = _literal(v_node)
            if k == "type" and (not ok_v or v not in SCHEMA_TYPES):
                got = repr(v) if ok_v else "an expression"
                _err(errors, v_node, f"{label}['type'] must be one of {', '.join(SCHEMA_TYPES)}, got {got}")
                ok_field = False
            elif k == "description" and (not ok_v or not isinstance(v, str)):
                _err(errors, v_node, f"{label}['description'] must be a literal string")
                ok_field = False
            elif k == "required" and (not ok_v or not isinstance(v, bool)):
                _err(errors, v_node, f"{label}['required'] must be True or False")
                ok_field = False
            else:
                spec[k] = v
        if not has_type:
            _err(errors, spec_node, f"{label} needs a 'type': one of {', '.join(SCHEMA_TYPES)}")
            ok_field = False
        ok_all = ok_all and ok_field
        schema[field] = spec
    return schema if ok_all else None


def validate(code: str) -> dict[str, Any]:
    errors: list[dict[str, Any]] = []
    try:
        tree = ast.parse(code, filename="workflow.py")
    except SyntaxError as e:
        errors.append({"line": e.lineno or 0, "column": e.offset or 0, "message": f"syntax error: {e.msg}"})
        return {"errors": errors, "input_schema": None, "output_schema": None}
    except ValueError as e:  # source with NUL bytes
        return {"errors": [{"line": 0, "column": 0, "message": f"invalid source: {e}"}], "input_schema": None, "output_schema": None}
    except (MemoryError, RecursionError):
        message = "the script is nested too deeply for Python to parse"
        return {"errors": [{"line": 0, "column": 0, "message": message}], "input_schema": None, "output_schema": None}
    _check_execute(errors, tree)
    _check_workflow_context(errors, tree)
    input_schema = _schema(errors, tree, "INPUT_SCHEMA")
    output_schema = _schema(errors, tree, "OUTPUT_SCHEMA")
    errors.sort(key=lambda e: (e["line"], e["column"]))
    return {"errors": errors, "input_schema": input_schema, "output_schema": output_schema}


def main() -> None:
    if "--serve" in sys.argv:
        for line in sys.stdin.buffer:
            try:
                result = validate(json.loads(line.decode("utf-8"))["code"])
            except Exception as e:  # a bad request must not end the validator
                result = {"errors": [{"line": 0, "column": 0, "message": f"validator failed: {e}"}]}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
        return
    print(json.dumps(validate(json.loads(sys.stdin.buffer.read().decode("utf-8"))["code"])))


if __name__ == "__main__":
    main()
