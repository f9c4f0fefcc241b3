"""Streaming summariser: summarises a long text part by part, emitting progress as it goes.

    shaker upload examples/summarise.py --mode stream
    shaker invoke summarise --stream --input '{"text": "...a long text...", "parts": 3}'

Each `ctx.emit(value)` reaches a streaming caller at once (one SSE chunk, `delta.content` plus the raw
value in `emitted`) and is recorded on the run either way (`shaker runs show RUN_ID`).
"""
from shaker import WorkflowContext

INPUT_SCHEMA = {
    "text": {"type": "string", "description": "the text to summarise", "required": True},
    "parts": {"type": "number", "description": "how many parts to summarise separately (default 3)"},
}
OUTPUT_SCHEMA = {
    "summary": {"type": "string", "description": "the combined summary"},
    "parts": {"type": "array", "description": "the summary of each part"},
}


def split(text: str, parts: int) -> list:
    words = text.split()
    size = max(1, -(-len(words) // max(1, parts)))
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]


def summarise(ctx: WorkflowContext, text: str) -> str:
    resp = ctx.chat.completions.create(
        messages=[
            {"role": "system", "content": "Summarise the user's text in one sentence."},
            {"role": "user", "content": text},
        ],
        intent="summarise",
        max_tokens=120,
    )
    return resp["choices"][0]["message"]["content"]


def execute(ctx: WorkflowContext):
    chunks = split(ctx.input["text"], int(ctx.input.get("parts") or 3))
    ctx.emit({"stage": "start", "parts": len(chunks)})
    partials = []
    for i, chunk in enumerate(chunks, start=1):
        partials.append(summarise(ctx, chunk))
        ctx.emit({"stage": "part", "done": i, "of": len(chunks), "summary": partials[-1]})
    summary = summarise(ctx, " ".join(partials)) if len(partials) > 1 else (partials[0] if partials else "")
    ctx.emit("done")
    return {"summary": summary, "parts": partials}
