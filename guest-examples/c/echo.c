/* echo: the input data becomes the output data. */
#include "workhost.h"

static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
  ret->tag = WORKHOST_TASK_TYPES_OUTCOME_SUCCESS;
  ret->val.success = *input; /* moved: clear it so it is not freed twice */
  input->ptr = NULL;
  input->len = 0;
  return true;
}
WORKHOST_HANDLER(run)
