/* fetch: an HTTP GET through wasi:http of the input string `url`, or else
 * of the configuration value `url`, `times` times (default 1); the status
 * and body length of the last response go into kv and into the output. A
 * refused request fails the task; a network error asks for a retry. Built
 * against `http-task-handler` (-DWORKHOST_HTTP). */
#include "workhost.h"

enum got { GOT_OK, GOT_DENIED, GOT_ERROR };

/* GETs `url`; on GOT_OK fills the status and the body's length. */
static enum got get(const char *url, int *status, int64_t *bytes, char *why, size_t why_len) {
  const char *sep = strstr(url, "://");
  if (!sep) {
    snprintf(why, why_len, "not a URL");
    return GOT_ERROR;
  }
  const char *authority = sep + 3;
  const char *path = strchr(authority, '/');
  char host[256];
  size_t host_len = path ? (size_t)(path - authority) : strlen(authority);
  if (host_len >= sizeof host) host_len = sizeof host - 1;
  memcpy(host, authority, host_len);
  host[host_len] = 0;

  wasi_http_types_own_outgoing_request_t request =
      wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
  wasi_http_types_borrow_outgoing_request_t r = wasi_http_types_borrow_outgoing_request(request);
  wasi_http_types_method_t method = {.tag = WASI_HTTP_TYPES_METHOD_GET};
  wasi_http_types_method_outgoing_request_set_method(r, &method);
  wasi_http_types_scheme_t scheme = {.tag = strncmp(url, "https", 5) == 0 ? WASI_HTTP_TYPES_SCHEME_HTTPS
                                                                         : WASI_HTTP_TYPES_SCHEME_HTTP};
  wasi_http_types_method_outgoing_request_set_scheme(r, &scheme);
  wh_string_t s;
  wh_string_set(&s, host);
  wasi_http_types_method_outgoing_request_set_authority(r, &s);
  wh_string_set(&s, path ? path : "/");
  wasi_http_types_method_outgoing_request_set_path_with_query(r, &s);

  wasi_http_outgoing_handler_own_future_incoming_response_t future;
  wasi_http_outgoing_handler_error_code_t code;
  if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &code)) {
    snprintf(why, why_len, "error code %d", code.tag);
    return code.tag == WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED ? GOT_DENIED : GOT_ERROR;
  }
  wasi_http_types_borrow_future_incoming_response_t f = wasi_http_types_borrow_future_incoming_response(future);
  wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(f);
  wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
  wasi_io_poll_pollable_drop_own(ready);
  wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
  bool some = wasi_http_types_method_future_incoming_response_get(f, &got);
  wasi_http_types_future_incoming_response_drop_own(future);
  if (!some || got.is_err) {
    snprintf(why, why_len, "no response");
    return GOT_ERROR;
  }
  if (got.val.ok.is_err) {
    int tag = got.val.ok.val.err.tag;
    snprintf(why, why_len, "error code %d", tag);
    return tag == WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED ? GOT_DENIED : GOT_ERROR;
  }
  wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
  wasi_http_types_borrow_incoming_response_t resp = wasi_http_types_borrow_incoming_response(response);
  *status = wasi_http_types_method_incoming_response_status(resp);
  *bytes = 0;
  wasi_http_types_own_incoming_body_t body;
  wasi_http_types_own_input_stream_t stream;
  if (!wasi_http_types_method_incoming_response_consume(resp, &body) ||
      !wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream)) {
    snprintf(why, why_len, "no body");
    return GOT_ERROR;
  }
  enum got result = GOT_OK;
  for (;;) {
    wh_bytes_t chunk;
    wasi_io_streams_stream_error_t e;
    if (wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), 65536, &chunk,
                                                          &e)) {
      *bytes += (int64_t)chunk.len;
      free(chunk.ptr);
    } else {
      if (e.tag != WASI_IO_STREAMS_STREAM_ERROR_CLOSED) {
        wasi_io_error_error_drop_own(e.val.last_operation_failed);
        snprintf(why, why_len, "reading the body failed");
        result = GOT_ERROR;
      }
      break;
    }
  }
  wasi_io_streams_input_stream_drop_own(stream);
  wasi_http_types_incoming_body_drop_own(body);
  wasi_http_types_incoming_response_drop_own(response);
  return result;
}

static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
  char *url = wh_get_string(input, "url");
  if (!url) url = wh_config("url");
  if (!url) return wh_fail(err, "no URL: give the input string `url` or the configuration value `url`");
  int64_t times = 1;
  wh_get_s64(input, "times", &times);
  int status = 0;
  int64_t bytes = 0;
  for (int64_t i = 0; i < (times < 1 ? 1 : times); i++) {
    char why[128];
    switch (get(url, &status, &bytes, why, sizeof why)) {
    case GOT_OK:
      break;
    case GOT_DENIED: {
      bool r = wh_fail(err, "request to %s refused by the host", url);
      free(url);
      return r;
    }
    case GOT_ERROR:
      wh_log(WH_WARN, "GET %s failed: %s; asking for a retry", url, why);
      free(url);
      return wh_retry(ret);
    }
  }
  char text[32];
  snprintf(text, sizeof text, "%d", status);
  wh_kv_set("last_status", text);
  snprintf(text, sizeof text, "%lld", (long long)bytes);
  wh_kv_set("last_bytes", text);
  wh_log(WH_INFO, "GET %s: %d, %lld bytes", url, status, (long long)bytes);
  free(url);
  wh_output_t out = {0};
  wh_put_s64(&out, "status", status);
  wh_put_s64(&out, "bytes", bytes);
  return wh_success(ret, &out);
}
WORKHOST_HANDLER(run)
