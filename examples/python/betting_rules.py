"""Business rules and events from Python, in the original UTP config shape.

    python examples/python/betting_rules.py

An engine with `permissions` and `business_rules` (the constants rules see), a
Python function as the tool `betfair.placeBet`, a Python business rule that caps
bets at `max_bet_amount`, and an event subscriber. One bet is denied, one is
placed; then the metrics are printed.
"""

import utp

CONFIG = {
    "permissions": {
        "betfair": {"enabled": True, "allowed_actions": ["listMarkets", "getOdds", "placeBet"]},
    },
    "business_rules": {"max_bet_amount": 1000},
}
MAX_BET = CONFIG["business_rules"]["max_bet_amount"]


def place_bet(args):
    """Place a bet on a market (a stand-in for the Betfair API)."""
    return {"bet_id": "b-1", "market": args["market"], "amount": args["amount"], "status": "placed"}


def max_bet_rule(tool, action, params):
    # tool = the manual name, action = the tool name without it, params = the arguments.
    return not (tool == "betfair" and action == "placeBet" and params.get("amount", 0) > MAX_BET)


async def on_bet_placed(event):
    print(f"  [event] {event['type']} {event['tool']} in {event['data'].get('duration_ms', 0):.2f} ms")


def on_denied(event):
    print(f"  [event] {event['type']} {event['tool']}: {event['data']['reason']}")


def main():
    with utp.Engine(CONFIG) as engine:
        engine.register_tool(
            "betfair.placeBet",
            place_bet,
            inputs={
                "type": "object",
                "properties": {"market": {"type": "string"}, "amount": {"type": "number"}},
                "required": ["market", "amount"],
            },
        )
        engine.domain_layer.add_business_rule("max_bet", max_bet_rule)
        engine.event_bus.subscribe("tool.succeeded", on_bet_placed)
        engine.event_bus.subscribe("policy.denied", on_denied)

        print("dry run of a 1500 bet:", engine.domain_layer.check("betfair.placeBet", {"market": "m1", "amount": 1500})["decision"])

        print("placing a bet of 1500:")
        try:
            engine.call_tool("betfair.placeBet", {"market": "m1", "amount": 1500})
            raise SystemExit("the 1500 bet should have been denied")
        except utp.PermissionDeniedError as e:
            print("  denied:", e)
        engine.event_bus.flush()  # let the subscribers print before going on

        print("placing a bet of 500:")
        result = engine.call_tool("betfair.placeBet", {"market": "m1", "amount": 500})
        engine.event_bus.flush()
        print("  placed:", result)
        assert result["status"] == "placed"

        tool_metrics = engine.metrics()["tools"]["betfair.placeBet"]
        print("metrics:", {"calls": tool_metrics["calls"], "policy_denied": tool_metrics["policy_denied"]})
        for line in engine.metrics_text().splitlines():
            if line.startswith(("utp_tool_calls_total", "utp_policy_denied_total")):
                print(" ", line)
        assert tool_metrics["policy_denied"] == 1 and tool_metrics["calls"]["succeeded"] == 1


if __name__ == "__main__":
    main()
