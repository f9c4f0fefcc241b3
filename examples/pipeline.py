"""A workflow calling another: greets through `hello`, then asks `chat` to say something about the name.

    shaker upload examples/hello.py
    shaker upload examples/chat.py
    shaker upload examples/pipeline.py
    shaker invoke pipeline --input '{"name": "Ada"}'

`ctx.workflows.run(ref, input=..., messages=...)` runs another workflow of the same account in the
same session and returns its output; the nested run records this run as its parent.
"""
from shaker import WorkflowContext

INPUT_SCHEMA = {"name": {"type": "string", "description": "who to greet", "required": True}}
OUTPUT_SCHEMA = {
    "greeting": {"type": "string", "description": "from the hello workflow"},
    "remark": {"type": "string", "description": "from the chat workflow"},
}


def execute(ctx: WorkflowContext):
    name = ctx.input["name"]
    hello = ctx.workflows.run("hello", input={"name": name})
    ctx.log("hello answered", greeting=hello["greeting"])
    chat = ctx.workflows.run("chat", input={"question": f"Say one friendly sentence about the name {name}."})
    return {"greeting": hello["greeting"], "remark": chat["answer"], "session_id": ctx.session_id}
