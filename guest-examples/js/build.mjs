// Builds a JavaScript handler into a component:
//   node build.mjs <handler.js> <out.wasm> [world] [--wit <dir>]
// The world is `task-handler` (default) or `http-task-handler` (for wasi:http
// and fetch()). `--wit` names workhost's `wit/` folder; the default is the
// one of the checkout this file is in (`../../wit`).
//
// Two steps: esbuild bundles the handler, the modules it imports and the npm
// packages they use into one ES module (the `workhost:*` and `wasi:*`
// imports stay imports: the host provides them); then componentize-js makes
// a component of that module.
import { componentize } from '@bytecodealliance/componentize-js';
import { build } from 'esbuild';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let wit = resolve(here, '../../wit');
const witAt = args.indexOf('--wit');
if (witAt >= 0) [, wit] = args.splice(witAt, 2);
const [src, out, world = 'task-handler'] = args;
if (!src || !out || !wit || args.length > 3) {
  console.error('usage: node build.mjs <handler.js> <out.wasm> [task-handler|http-task-handler] [--wit <dir>]');
  process.exit(2);
}

const work = await mkdtemp(join(tmpdir(), 'workhost-js-'));
try {
  const bundle = join(work, 'handler.bundle.js');
  await build({
    entryPoints: [resolve(src)],
    outfile: bundle,
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    // `neutral` reads no package.json field by default; npm packages name
    // their ES module entry in `module` or `main`.
    mainFields: ['module', 'main'],
    external: ['workhost:*', 'wasi:*'],
    logLevel: 'warning',
  });
  // Every feature of the engine is kept but fetch-event (incoming HTTP, which
  // no handler world exports): `clocks` (Date.now(), new Date(),
  // performance.now(), timers) and `random` (Math.random(),
  // crypto.getRandomValues()) read the host's wasi:clocks and wasi:random at
  // run time, so each run sees the real time and fresh randomness; without
  // them both would be frozen at build time. `http` (fetch()) needs the
  // wasi:http imports of `http-task-handler`, so other worlds leave it out.
  // stdio (console.log) goes to the run's log.
  const disableFeatures = ['fetch-event'];
  if (world !== 'http-task-handler') disableFeatures.push('http');
  const { component } = await componentize({
    sourcePath: bundle,
    witPath: resolve(wit),
    worldName: world,
    disableFeatures,
  });
  await writeFile(out, component);
} finally {
  await rm(work, { recursive: true, force: true });
}
