"""A workflow over Python tools: retries, a policy denial with a fallback, and live progress.

    python examples/python/restock_workflow.py

The shop's tools are Python functions. The inventory service is flaky (it fails
twice, then answers), so its step retries with backoff. A business rule refuses
restocks above 100 units, so the update step is denied and falls back to queueing
the update for a human. A subscriber to `step.*` prints each step as it goes, and
the run's record (status, outputs, attempts per step) is printed at the end.
"""

import utp

RESTOCK = """
name: restock
inputs:
  sku: {type: string}
  extra: {type: integer, default: 100}
timeout: 30s
steps:
  - id: stock
    tool: shop.getInventory
    args: {sku: "${{ inputs.sku }}"}
    retry: {max_attempts: 3, initial_delay: 20ms, factor: 2, max_delay: 200ms}
  - id: update
    tool: shop.setInventory
    depends_on: [stock]
    if: "steps.stock.output.count < 10"
    args: {sku: "${{ inputs.sku }}", count: "${{ steps.stock.output.count + inputs.extra }}"}
    on_error:
      fallback: {tool: shop.queueUpdate, args: {sku: "${{ inputs.sku }}", count: "${{ steps.stock.output.count + inputs.extra }}"}}
  - id: log
    tool: sheets.appendRow
    depends_on: [update]
    args: {row: ["${{ inputs.sku }}", "${{ steps.update.output.count }}", "${{ steps.update.output.status }}"]}
outputs:
  requested: "${{ steps.update.output.count }}"
  status: "${{ steps.update.output.status }}"
  row: "${{ steps.log.output.row }}"
"""

MAX_RESTOCK = 100
COUNTS = {"A1": 4}
SHEET = []
inventory_calls = 0


def get_inventory(args):
    """Stock count for a product (fails twice, like a service that is warming up)."""
    global inventory_calls
    inventory_calls += 1
    if inventory_calls <= 2:
        raise ConnectionError(f"inventory service unavailable (call {inventory_calls})")
    return {"sku": args["sku"], "count": COUNTS.get(args["sku"], 0)}


def set_inventory(args):
    """Set the stock count of a product."""
    COUNTS[args["sku"]] = args["count"]
    return {"sku": args["sku"], "count": args["count"], "status": "updated"}


async def queue_update(args):
    """Queue a stock update for a human to review."""
    return {"sku": args["sku"], "count": args["count"], "status": "queued for review"}


def append_row(args):
    """Append a row to the restock sheet."""
    SHEET.append(args["row"])
    return {"row": args["row"], "rows": len(SHEET)}


def restock_limit(tool, action, params):
    # Restocks above MAX_RESTOCK units need a person: deny them (the workflow falls back).
    if (tool, action) == ("shop", "setInventory") and params.get("count", 0) > MAX_RESTOCK:
        return utp.Decision.deny(f"restocks above {MAX_RESTOCK} units need a review")
    return True


def on_step(event):
    data = event.get("data", {})
    detail = {
        "step.started": lambda: f"{event['tool']}",
        "step.completed": lambda: f"{event['tool']} denied, done by its fallback"
        if data.get("fallback")
        else f"{event['tool']} ok after {data.get('attempts')} attempt(s)",
        "step.retrying": lambda: f"attempt {data.get('attempt')} failed ({data.get('message')}); "
        f"retrying in {data.get('delay_ms')} ms",
        "step.failed": lambda: f"{data.get('code')}: {data.get('message')}",
        "step.skipped": lambda: f"{data.get('reason', '')}",
    }.get(event["type"], lambda: "")()
    print(f"  [{event['type']:<14}] {event['step_id']:<6} {detail}")


def main():
    sku = {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}
    update = {
        "type": "object",
        "properties": {"sku": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
        "required": ["sku", "count"],
    }
    with utp.Engine() as engine:
        engine.register_tool("shop.getInventory", get_inventory, inputs=sku)
        engine.register_tool("shop.setInventory", set_inventory, inputs=update)
        engine.register_tool("shop.queueUpdate", queue_update, inputs=update)
        engine.register_tool("sheets.appendRow", append_row)
        engine.domain_layer.add_business_rule("restock_limit", restock_limit)
        engine.event_bus.subscribe("step.*", on_step)

        engine.validate_workflow(RESTOCK)
        print("running restock for A1:")
        record = engine.run_workflow(RESTOCK, {"sku": "A1"}, session="store-42")
        engine.event_bus.flush()  # let the subscriber print everything first

        print(f"\nexecution {record['execution_id']}: {record['status']}")
        for step_id, step in record["steps"].items():
            note = f"  ({step['note']})" if step.get("note") else ""
            print(f"  {step_id:<6} {step['status']:<9} attempts={step['attempts']}{note}")
        print("outputs:", record["outputs"])
        print("sheet:", SHEET)

        assert record["status"] == "completed", record
        assert record["steps"]["stock"]["attempts"] == 3
        assert record["outputs"]["status"] == "queued for review"
        assert record["outputs"]["requested"] == 104
        assert COUNTS["A1"] == 4, "the denied update never ran"


if __name__ == "__main__":
    main()
