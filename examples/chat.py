"""Chat: answers the conversation (or `input.question`) with one model call.

    shaker upload examples/chat.py
    shaker invoke chat --message "What is Shaker?"

Without a configured provider the call goes to the built-in offline `local` model; pass
`model="gpt-4o-mini"` (or set a route) to use a real one. The call is recorded on the run:
`shaker runs show RUN_ID` lists its model, latency and tokens.
"""
from shaker import WorkflowContext

INPUT_SCHEMA = {"question": {"type": "string", "description": "asked when no messages are sent"}}
OUTPUT_SCHEMA = {
    "answer": {"type": "string", "description": "the model's reply"},
    "model": {"type": "string", "description": "the model that answered"},
}

SYSTEM = "You are a concise assistant. Answer in at most three sentences."


def execute(ctx: WorkflowContext):
    messages = list(ctx.messages)
    question = (ctx.input or {}).get("question")
    if question:
        messages.append({"role": "user", "content": question})
    if not messages:
        return {"answer": "Ask me something: send messages or input.question.", "model": ""}
    resp = ctx.chat.completions.create(
        messages=[{"role": "system", "content": SYSTEM}] + messages,
        intent="chat",
        temperature=ctx.params.get("temperature", 0.2),
    )
    return {"answer": resp["choices"][0]["message"]["content"], "model": resp.get("model", "")}
