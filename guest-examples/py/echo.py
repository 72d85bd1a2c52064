"""echo: the input data becomes the output data."""
import workhost


@workhost.handler
def execute(name, data):
    return data
