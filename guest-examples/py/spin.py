"""spin: an endless loop that never calls the host."""
import workhost


@workhost.handler
def execute(name, data):
    n = 0
    while True:
        n += 1
