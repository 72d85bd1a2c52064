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
import { build } from 'esbuild';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// A warm-up run at build time, in the realm of componentize-js's generated
// bindings (the code that lifts and lowers each call), after their top
// level. componentize-js snapshots the engine once the initializer has run,
// and every run starts from that snapshot in a fresh instance; SpiderMonkey
// creates a standard class (Uint8Array, DataView, Promise, the iterators)
// and compiles a self-hosted function on first use, so whatever the
// initializer left untouched was built again in every run; so were the
// intrinsics of an await and a promise reaction (the bindings' export is an
// async function). Measured on an echo handler, one thread: a run went from
// 360-367 to 238-255 µs with the classes, and to 227-233 µs with the
// awaits. Only built-ins are touched, and nothing here is seen by a run
// (a log line in the promise job shows in no run's log).
const WARM_UP = `
;{
  const buffer = new ArrayBuffer(16);
  new Uint8Array(buffer, 0, 8).set(new Uint8Array(1));
  new Uint8Array(buffer.slice(0, 1));
  new DataView(buffer).setBigInt64(0, BigInt.asIntN(64, 1n), true);
  new TextDecoder().decode(new TextEncoder().encode('warm-up'));
  for (const x of [1]) void x;
  const [y] = [1];
  void y;
  (async () => 0)();
  (async () => {
    await 0;
  })();
  Promise.resolve(0).then((x) => x);
  void new Error('warm-up').stack;
  new Map().set(1, 1);
}
`;

// componentize-js with WARM_UP appended to its initializer script. It has
// no option for that, so a copy of its entry module (beside the original,
// so its relative imports resolve; the original is left as installed) gets
// one line changed. A componentize-js whose line differs fails here, by
// name, rather than building slower components.
async function warmedComponentize() {
  const entry = fileURLToPath(import.meta.resolve('@bytecodealliance/componentize-js'));
  const anchor = 'await writeFile(initializerPath, jsBindings);';
  const source = await readFile(entry, 'utf8');
  if (!source.includes(anchor)) {
    throw new Error(`${entry}: the line \`${anchor}\` that build.mjs extends with its warm-up is not there (a componentize-js other than 0.19.3?)`);
  }
  const copy = join(dirname(entry), 'componentize.workhost-warm-up.js');
  const patched = source.replace(anchor, 'await writeFile(initializerPath, jsBindings + globalThis.__workhostWarmUp);');
  let current = null;
  try {
    current = await readFile(copy, 'utf8');
  } catch {}
  if (current !== patched) {
    // Written aside and renamed, so a build running beside this one never
    // imports half a file.
    const aside = `${copy}.${process.pid}`;
    await writeFile(aside, patched);
    await rename(aside, copy);
  }
  globalThis.__workhostWarmUp = WARM_UP;
  return (await import(pathToFileURL(copy).href)).componentize;
}

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
  const componentize = await warmedComponentize();
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
