"""fetch: an HTTP GET of the input string `url`, or else of the configuration
value `url`, `times` times (default 1); the status and body length of the
last response go into kv and into the output. A refused request fails the
task; a network error asks for a retry. Built against `http-task-handler`."""
import workhost
import workhost_http


@workhost.handler
def execute(name, data):
    url = data.get("url") or workhost.config.get("url")
    if not url:
        raise workhost.Fail("no URL: give the input string `url` or the configuration value `url`")
    status, size = 0, 0
    for _ in range(max(1, data.get("times", 1))):
        try:
            status, body = workhost_http.get(url)
        except workhost_http.HttpError as e:
            if e.denied:
                raise workhost.Fail(f"request to {url} refused by the host")
            workhost.log.warn(f"GET {url} failed: {e}; asking for a retry")
            return workhost.RETRY
        size = len(body)
    workhost.kv.set("last_status", str(status))
    workhost.kv.set("last_bytes", str(size))
    workhost.log.info(f"GET {url}: {status}, {size} bytes")
    return {"status": status, "bytes": size}
