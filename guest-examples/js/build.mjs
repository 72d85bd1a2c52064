// Builds a JavaScript handler into a component with componentize-js:
//   node build.mjs <handler.js> <out.wasm> [world]
// The world is `task-handler` (default) or `http-task-handler` (for fetch()).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const [src, out, world = 'task-handler'] = process.argv.slice(2);
if (!src || !out) {
  console.error('usage: node build.mjs <handler.js> <out.wasm> [task-handler|http-task-handler]');
  process.exit(2);
}
// stdio (console.log) is kept: the host captures it into the run's log.
// The engine's own fetch() is left out: the handler export is synchronous,
// so handlers use wasi:http directly (see fetch.js).
const disableFeatures = ['random', 'clocks', 'http'];
const { component } = await componentize({
  sourcePath: resolve(src),
  witPath: resolve(here, '../../wit'),
  worldName: world,
  disableFeatures,
});
await writeFile(out, component);
