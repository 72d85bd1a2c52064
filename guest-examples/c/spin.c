/* spin: an endless loop that never calls the host. */
#include "workhost.h"

static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
  volatile uint64_t n = 0;
  for (;;) n++;
  return wh_retry(ret);
}
WORKHOST_HANDLER(run)
