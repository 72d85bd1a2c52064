// counter: counts its executions in kv (the seed's `totalExecutions`).
import { defineHandler, kv, log } from './workhost.js';

export const handler = defineHandler(() => {
  const total = kv.increment('totalExecutions', 1);
  log.info(`total executions: ${total}`);
  return { total_executions: total };
});
