/* fail: fails permanently with the input string `message`, or a default. */
#include "workhost.h"

static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
  char *message = wh_get_string(input, "message");
  bool r = wh_fail(err, "%s", message ? message : "fail handler failed on purpose");
  free(message);
  return r;
}
WORKHOST_HANDLER(run)
