# Account A's trivial workflow: its output is A's own, so a run that answers anything else ran
# somebody else's code.


def execute(ctx):
    return {"who": "A", "n": ctx.input["n"], "mark": "__A_MARK__"}
