// fetch: an HTTP GET (the standard fetch(), over wasi:http) of the input
// string `url`, or else of the configuration value `url`, `times` times
// (default 1); the status and body length of the last response go into kv
// and into the output. A refused request fails the task; a network error
// asks for a retry. Built against `http-task-handler`.
import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingRequest } from 'wasi:http/types@0.2.12';
import { defineHandler, Fail, RETRY, config, kv, log } from './workhost.js';

export const handler = defineHandler((name, data) => {
  const url = data.url ?? config.get('url');
  if (!url) throw new Fail('no URL: give the input string `url` or the configuration value `url`');
  let status = 0;
  let bytes = 0;
  for (let i = 0; i < Math.max(1, data.times ?? 1); i++) {
    let response;
    try {
      response = fetchSync(url);
    } catch (e) {
      if (e?.payload?.tag === 'HTTP-request-denied' || String(e).includes('HTTP-request-denied')) {
        throw new Fail(`request to ${url} refused by the host`);
      }
      log.warn(`GET ${url} failed: ${e}; asking for a retry`);
      return RETRY;
    }
    status = response.status;
    bytes = response.bytes;
  }
  kv.set('last_status', String(status));
  kv.set('last_bytes', String(bytes));
  log.info(`GET ${url}: ${status}, ${bytes} bytes`);
  return { status, bytes };
});

// A blocking GET through the raw wasi:http bindings: the handler export is
// synchronous, so the Promise-based fetch() does not fit it.
function fetchSync(url) {
  const m = /^(https?):\/\/([^/]+)(\/.*)?$/.exec(url);
  if (!m) throw new Fail(`${JSON.stringify(url)} is not an http(s) URL`);
  const request = new OutgoingRequest(new Fields());
  request.setMethod({ tag: 'get' });
  request.setScheme({ tag: m[1].toUpperCase() });
  request.setAuthority(m[2]);
  request.setPathWithQuery(m[3] ?? '/');
  const future = handle(request, undefined);
  future.subscribe().block();
  const got = future.get();
  if (got === undefined) throw new Error('no response');
  if (got.tag === 'err') throw new Error('response already taken');
  if (got.val.tag === 'err') throw new Error(`HTTP error ${got.val.val.tag}`);
  const response = got.val.val;
  const stream = response.consume().stream();
  let bytes = 0;
  for (;;) {
    try {
      bytes += stream.blockingRead(65536n).length;
    } catch (e) {
      if (e?.payload?.tag === 'closed') break;
      throw new Error(`reading the body failed: ${e}`);
    }
  }
  return { status: response.status(), bytes };
}
