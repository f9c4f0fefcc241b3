"""Agent: a tool-calling loop with two plain Python functions as tools.

    shaker upload examples/agent.py
    shaker invoke agent --message "What is 12.5 plus 30?"

`ctx.agents.run` turns each function's name, docstring and annotated parameters into a tool schema,
then loops model -> tool calls -> model until the model answers without tools (or
`max_iterations` is reached). Every model call of the loop is recorded on the run.
"""
from shaker import WorkflowContext

OUTPUT_SCHEMA = {
    "answer": {"type": "string", "description": "the agent's final reply"},
    "iterations": {"type": "number", "description": "model calls the loop made"},
    "tool_calls": {"type": "array", "description": "the tools called, in order"},
}

CAPITALS = {"france": "Paris", "japan": "Tokyo", "kenya": "Nairobi", "peru": "Lima"}


def add(a: float, b: float) -> float:
    """Adds two numbers and returns their sum."""
    return a + b


def capital_of(country: str) -> str:
    """Returns the capital city of a country, or 'unknown'."""
    return CAPITALS.get(country.strip().lower(), "unknown")


def execute(ctx: WorkflowContext):
    messages = ctx.messages or [{"role": "user", "content": (ctx.input or {}).get("question", "What is 2 plus 3?")}]
    result = ctx.agents.run(
        messages=messages,
        tools=[add, capital_of],
        system="Use the tools for arithmetic and capitals; then answer briefly.",
        intent="agent",
        max_iterations=4,
    )
    calls = [
        call["function"]["name"]
        for message in result["messages"]
        for call in (message.get("tool_calls") or [])
    ]
    return {"answer": result["content"], "iterations": result["iterations"], "tool_calls": calls}
