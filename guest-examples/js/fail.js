// fail: fails permanently with the input string `message`, or a default.
import { defineHandler, Fail } from './workhost.js';

export const handler = defineHandler((name, data) => {
  throw new Fail(data.message ?? 'fail handler failed on purpose');
});
