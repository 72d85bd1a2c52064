// fetch-async: an async handler. It waits on a timer, then awaits the
// standard fetch() (over wasi:http) of the input string `url` and the
// response body; componentize-js runs the event loop until the handler's
// Promise settles. Built against `http-task-handler`.
//
// fetch() reports a request the host refused (off the allow-list) as the
// same NetworkError as an unreachable server, so both ask for a retry here;
// fetch.js, on the raw wasi:http bindings, tells them apart.
import { defineHandler, Fail, RETRY, log } from './workhost.js';

export const handler = defineHandler(async (name, data) => {
  if (typeof data.url !== 'string') throw new Fail('give the input string `url`');
  await new Promise((resolve) => setTimeout(resolve, 5));
  let response;
  try {
    response = await fetch(data.url);
  } catch (e) {
    log.warn(`GET ${data.url} failed: ${e}; asking for a retry`);
    return RETRY;
  }
  const body = await response.text();
  return { status: response.status, bytes: body.length };
});
