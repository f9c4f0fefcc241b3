"""Retrieval: answers a question from the `faq` datastore (keyword search, then one model call).

    shaker datastores create faq
    shaker datastores load faq examples/data/faq.ndjson
    shaker upload examples/retrieval.py --datastore faq
    shaker invoke retrieval --input '{"question": "How do I stream emitted values?"}'

The workflow may only read the stores it was uploaded with (`--datastore faq`; `faq:rw` would let
it write). Try `mode="hybrid"` or `mode="vector"` once the store has embeddings.
"""
from shaker import WorkflowContext

INPUT_SCHEMA = {
    "question": {"type": "string", "description": "what to look up", "required": True},
    "limit": {"type": "number", "description": "how many passages to use (default 3)"},
}
OUTPUT_SCHEMA = {
    "answer": {"type": "string", "description": "the answer, grounded in the passages"},
    "sources": {"type": "array", "description": "ids and scores of the passages used"},
}

STORE = "faq"


def execute(ctx: WorkflowContext):
    question = ctx.input["question"]
    hits = ctx.datastore.search(STORE, query=question, mode="keyword", limit=int(ctx.input.get("limit") or 3))
    ctx.log("retrieved", count=len(hits), ids=[h["id"] for h in hits])
    if not hits:
        return {"answer": "I found nothing about that in the FAQ.", "sources": []}
    context = "\n\n".join(f"[{h['id']}] {h['text']}" for h in hits)
    resp = ctx.chat.completions.create(
        messages=[
            {"role": "system", "content": "Answer only from these passages; cite their [ids].\n\n" + context},
            {"role": "user", "content": question},
        ],
        intent="answer",
    )
    return {
        "answer": resp["choices"][0]["message"]["content"],
        "sources": [{"id": h["id"], "score": h["score"]} for h in hits],
    }
