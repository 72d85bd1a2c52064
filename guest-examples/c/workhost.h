/* Write a workhost task handler in C: typed access to input data, an output
 * builder, and short forms for the platform imports, over the bindings
 * wit-bindgen generates for the world `task-handler` (or, compiled with
 * -DWORKHOST_HTTP, `http-task-handler`).
 *
 *   #include "workhost.h"
 *
 *   static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
 *     int64_t step = 1;
 *     wh_get_s64(input, "step", &step);
 *     int64_t total;
 *     if (!wh_kv_increment("total", step, &total)) return wh_fail(err, "kv increment failed");
 *     wh_log(WH_INFO, "total is now %lld", (long long)total);
 *     wh_output_t out = {0};
 *     wh_put_s64(&out, "total", total);
 *     return wh_success(ret, &out);        // or wh_retry(ret), or wh_fail(err, "why %d", 42)
 *   }
 *   WORKHOST_HANDLER(run)
 *
 * Ownership: the host's arguments are freed after `run` returns (a handler
 * that moves input into its output clears what it took); output and error
 * strings are heap copies, freed after the host reads them.
 */
#ifndef WORKHOST_H
#define WORKHOST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef WORKHOST_HTTP
#include "http_task_handler.h"
typedef http_task_handler_string_t wh_string_t;
typedef http_task_handler_list_u8_t wh_bytes_t;
#define wh_string_set http_task_handler_string_set
#define wh_string_dup http_task_handler_string_dup
#define wh_string_free http_task_handler_string_free
#else
#include "task_handler.h"
typedef task_handler_string_t wh_string_t;
typedef task_handler_list_u8_t wh_bytes_t;
#define wh_string_set task_handler_string_set
#define wh_string_dup task_handler_string_dup
#define wh_string_free task_handler_string_free
#endif

typedef workhost_task_types_data_t wh_data_t;
typedef workhost_task_types_value_t wh_value_t;
typedef workhost_task_types_outcome_t wh_outcome_t;

/* Log levels. */
#define WH_DEBUG WORKHOST_TASK_LOG_LEVEL_DEBUG
#define WH_INFO WORKHOST_TASK_LOG_LEVEL_INFO
#define WH_WARN WORKHOST_TASK_LOG_LEVEL_WARN
#define WH_ERROR WORKHOST_TASK_LOG_LEVEL_ERROR

/* Makes `fn(name, input, ret, err) -> bool` the component's handler. */
#define WORKHOST_HANDLER(fn)                                                                          \
  bool exports_workhost_task_handler_execute_task(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, \
                                                  wh_string_t *err) {                                 \
    bool ok = fn(name, input, ret, err);                                                              \
    wh_string_free(name);                                                                             \
    workhost_task_types_data_free(input);                                                             \
    return ok;                                                                                        \
  }

static inline bool wh_key_is(const wh_string_t *s, const char *key) {
  return s->len == strlen(key) && memcmp(s->ptr, key, s->len) == 0;
}

/* The value under `key`, or NULL. */
static inline const wh_value_t *wh_get(const wh_data_t *d, const char *key) {
  for (size_t i = 0; i < d->len; i++)
    if (wh_key_is(&d->ptr[i].f0, key)) return &d->ptr[i].f1;
  return NULL;
}

/* The integer under `key` into *out; false if there is none of that type. */
static inline bool wh_get_s64(const wh_data_t *d, const char *key, int64_t *out) {
  const wh_value_t *v = wh_get(d, key);
  if (!v || v->tag != WORKHOST_TASK_TYPES_VALUE_S64) return false;
  *out = v->val.s64;
  return true;
}

/* The string under `key` as a new NUL-terminated copy (free it), or NULL. */
static inline char *wh_get_string(const wh_data_t *d, const char *key) {
  const wh_value_t *v = wh_get(d, key);
  if (!v || v->tag != WORKHOST_TASK_TYPES_VALUE_STRING) return NULL;
  char *s = malloc(v->val.string.len + 1);
  memcpy(s, v->val.string.ptr, v->val.string.len);
  s[v->val.string.len] = 0;
  return s;
}

/* Output data under construction. */
typedef struct {
  wh_data_t data;
  size_t cap;
} wh_output_t;

static inline wh_value_t *wh_put(wh_output_t *o, const char *key) {
  if (o->data.len == o->cap) {
    o->cap = o->cap ? o->cap * 2 : 4;
    o->data.ptr = realloc(o->data.ptr, o->cap * sizeof *o->data.ptr);
  }
  workhost_task_types_tuple2_string_value_t *pair = &o->data.ptr[o->data.len++];
  wh_string_dup(&pair->f0, key);
  return &pair->f1;
}

static inline void wh_put_s64(wh_output_t *o, const char *key, int64_t v) {
  wh_value_t *val = wh_put(o, key);
  val->tag = WORKHOST_TASK_TYPES_VALUE_S64;
  val->val.s64 = v;
}

static inline void wh_put_f64(wh_output_t *o, const char *key, double v) {
  wh_value_t *val = wh_put(o, key);
  val->tag = WORKHOST_TASK_TYPES_VALUE_F64;
  val->val.f64 = v;
}

static inline void wh_put_bool(wh_output_t *o, const char *key, bool v) {
  wh_value_t *val = wh_put(o, key);
  val->tag = WORKHOST_TASK_TYPES_VALUE_BOOL;
  val->val.bool_ = v;
}

static inline void wh_put_string(wh_output_t *o, const char *key, const char *v) {
  wh_value_t *val = wh_put(o, key);
  val->tag = WORKHOST_TASK_TYPES_VALUE_STRING;
  wh_string_dup(&val->val.string, v);
}

/* Copies `n` values into a list value of `field` (s64_list, f64_list). */
#define WH_PUT_LIST(o, key, TAG, field, v, n)                                \
  do {                                                                       \
    wh_value_t *val_ = wh_put(o, key);                                       \
    val_->tag = TAG;                                                         \
    val_->val.field.ptr = malloc((n) ? (n) * sizeof *(v) : 1);               \
    if (n) memcpy(val_->val.field.ptr, v, (n) * sizeof *(v));                \
    val_->val.field.len = (n);                                               \
  } while (0)

static inline void wh_put_s64_list(wh_output_t *o, const char *key, const int64_t *v, size_t n) {
  WH_PUT_LIST(o, key, WORKHOST_TASK_TYPES_VALUE_S64_LIST, s64_list, v, n);
}

static inline void wh_put_f64_list(wh_output_t *o, const char *key, const double *v, size_t n) {
  WH_PUT_LIST(o, key, WORKHOST_TASK_TYPES_VALUE_F64_LIST, f64_list, v, n);
}

/* Succeeds with `out` as output (which the host then owns). */
static inline bool wh_success(wh_outcome_t *ret, wh_output_t *out) {
  ret->tag = WORKHOST_TASK_TYPES_OUTCOME_SUCCESS;
  ret->val.success = out->data;
  return true;
}

/* Asks to run again after the backoff delay. */
static inline bool wh_retry(wh_outcome_t *ret) {
  ret->tag = WORKHOST_TASK_TYPES_OUTCOME_RETRY;
  return true;
}

/* Fails the task permanently with a printf-formatted message. */
static inline bool wh_fail(wh_string_t *err, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  wh_string_dup(err, buf);
  return false;
}

/* A printf-formatted line in the run's log. */
static inline void wh_log(workhost_task_log_level_t level, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  wh_string_t msg;
  wh_string_set(&msg, buf);
  workhost_task_log_write(level, &msg);
}

/* Atomically adds `delta` to the kv integer `key`; false on a kv error. */
static inline bool wh_kv_increment(const char *key, int64_t delta, int64_t *out) {
  wh_string_t k;
  wh_string_set(&k, key);
  workhost_task_kv_kv_error_t e;
  if (workhost_task_kv_increment(&k, delta, out, &e)) return true;
  workhost_task_kv_kv_error_free(&e);
  return false;
}

/* Stores the NUL-terminated `value` under kv `key`; false on a kv error. */
static inline bool wh_kv_set(const char *key, const char *value) {
  wh_string_t k;
  wh_string_set(&k, key);
  wh_bytes_t v = {(uint8_t *)value, strlen(value)};
  workhost_task_kv_kv_error_t e;
  if (workhost_task_kv_set(&k, &v, &e)) return true;
  workhost_task_kv_kv_error_free(&e);
  return false;
}

/* The configuration value `key` as a new NUL-terminated string (free it), or NULL. */
static inline char *wh_config(const char *key) {
  wh_string_t k, v;
  wh_string_set(&k, key);
  if (!workhost_task_config_get(&k, &v)) return NULL;
  char *s = malloc(v.len + 1);
  memcpy(s, v.ptr, v.len);
  s[v.len] = 0;
  wh_string_free(&v);
  return s;
}

#endif
