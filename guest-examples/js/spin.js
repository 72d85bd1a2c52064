// spin: an endless loop that never calls the host.
import { defineHandler } from './workhost.js';

export const handler = defineHandler(() => {
  let n = 0;
  for (;;) {
    n = (n + 1) | 0;
  }
});
