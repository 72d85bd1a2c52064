/* counter: counts its executions in kv (the seed's `totalExecutions`). */
#include "workhost.h"

static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
  int64_t total;
  if (!wh_kv_increment("totalExecutions", 1, &total)) return wh_fail(err, "kv increment failed");
  wh_log(WH_INFO, "total executions: %lld", (long long)total);
  wh_output_t out = {0};
  wh_put_s64(&out, "total_executions", total);
  return wh_success(ret, &out);
}
WORKHOST_HANDLER(run)
