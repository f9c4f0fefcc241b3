"""The first workflow: greets whoever `input.name` or the last message names."""
from shaker import WorkflowContext

INPUT_SCHEMA = {"name": {"type": "string", "description": "who to greet"}}
OUTPUT_SCHEMA = {"greeting": {"type": "string", "description": "the greeting"}}


def execute(ctx: WorkflowContext):
    name = (ctx.input or {}).get("name")
    if not name and ctx.messages:
        name = ctx.messages[-1].get("content")
    ctx.log("greeting", name=name)
    return {"greeting": f"Hello, {name or 'world'}!", "session_id": ctx.session_id}
