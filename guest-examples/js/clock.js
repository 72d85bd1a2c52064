// clock: this run's real wall-clock time, two readings of the monotonic
// clock, and fresh randomness (Date.now(), new Date(), performance.now(),
// Math.random(), crypto.getRandomValues(), crypto.randomUUID()).
import { defineHandler, f64 } from './workhost.js';

export const handler = defineHandler(() => {
  const wall = Date.now();
  const utc = new Date(wall).toISOString();
  // Two readings of the monotonic clock, the second once it has moved.
  const first = performance.now();
  let second = performance.now();
  while (second === first) second = performance.now();
  return {
    wall_ms: wall,
    utc,
    mono_ms: [f64(first), f64(second)],
    random: f64(Math.random()),
    bytes: Array.from(crypto.getRandomValues(new Uint8Array(16))),
    uuid: crypto.randomUUID(),
  };
});
