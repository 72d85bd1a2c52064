"""fail: fails permanently with the input string `message`, or a default."""
import workhost


@workhost.handler
def execute(name, data):
    raise workhost.Fail(data.get("message", "fail handler failed on purpose"))
