"""counter: counts its executions in kv (the seed's `totalExecutions`)."""
import workhost


@workhost.handler
def execute(name, data):
    total = workhost.kv.increment("totalExecutions", 1)
    workhost.log.info(f"total executions: {total}")
    return {"total_executions": total}
