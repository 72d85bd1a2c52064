// Write a workhost task handler in JavaScript as one function of plain
// objects:
//
//   import { handler, RETRY, Fail, kv, log } from './workhost.js';
//   export const handler = defineHandler((name, data) => {
//     const total = kv.increment('total', data.step ?? 1);
//     log.info(`total is now ${total}`);
//     return { total };   // or: return RETRY; or: throw new Fail('why')
//   });
//
// Values: an integer Number or a BigInt is an s64 (a Number whose value is
// integral becomes s64: JavaScript has one number type; wrap it as f64(x)
// to send a float), other Numbers f64, booleans, strings, and arrays of one
// of those. Integers arrive as Numbers when they are safe integers, else as
// BigInts. Returning an object succeeds with it as output; returning RETRY
// asks to run again after the backoff delay; throwing fails the task
// permanently with the error's message.
import * as wkv from 'workhost:task/kv@0.1.1';
import * as wlog from 'workhost:task/log@0.1.1';
import * as wconfig from 'workhost:task/config@0.1.1';
import * as wcontext from 'workhost:task/context@0.1.1';

/** Return this from a handler to ask for a retry after the backoff delay. */
export const RETRY = Symbol('workhost.retry');

/** Throw to fail the task permanently with this message. */
export class Fail extends Error {}

/** A float that stays a float even when its value is integral. */
export class F64 {
  constructor(value) {
    this.value = value;
  }
}
export const f64 = (value) => new F64(value);

function toValue(key, v) {
  if (typeof v === 'boolean') return { tag: 'bool', val: v };
  if (typeof v === 'bigint') return { tag: 's64', val: v };
  if (v instanceof F64) return { tag: 'f64', val: v.value };
  if (typeof v === 'number') {
    return Number.isInteger(v) ? { tag: 's64', val: BigInt(v) } : { tag: 'f64', val: v };
  }
  if (typeof v === 'string') return { tag: 'string', val: v };
  if (Array.isArray(v)) {
    if (v.length > 0 && v.every((x) => typeof x === 'boolean')) return { tag: 'bool-list', val: v };
    if (v.length > 0 && v.every((x) => typeof x === 'bigint' || (typeof x === 'number' && Number.isInteger(x)))) {
      // Typed arrays: the canonical ABI lowers list<s64> and list<f64> from them.
      return { tag: 's64-list', val: BigInt64Array.from(v, (x) => BigInt(x)) };
    }
    if (v.length > 0 && v.every((x) => typeof x === 'number' || x instanceof F64)) {
      return { tag: 'f64-list', val: Float64Array.from(v, (x) => (x instanceof F64 ? x.value : x)) };
    }
    if (v.every((x) => typeof x === 'string')) return { tag: 'string-list', val: v };
    throw new Fail(`data key ${JSON.stringify(key)}: a list must hold one type: number, boolean or string`);
  }
  throw new Fail(`data key ${JSON.stringify(key)}: ${typeof v} is not a task data type`);
}

const int = (x) => (x >= BigInt(Number.MIN_SAFE_INTEGER) && x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x);

function fromValue({ tag, val }) {
  if (tag === 's64') return int(val);
  if (tag === 's64-list') return Array.from(val, int);
  return Array.isArray(val) || ArrayBuffer.isView(val) ? Array.from(val) : val;
}

/** A plain object as WIT task data. */
export function toData(obj) {
  return Object.entries(obj ?? {}).map(([k, v]) => [k, toValue(k, v)]);
}

/** WIT task data as a plain object. */
export function fromData(pairs) {
  return Object.fromEntries(pairs.map(([k, v]) => [k, fromValue(v)]));
}

// `f()`, with a thrown error as a thrown string: the err(string) of
// execute-task.
function failing(f) {
  try {
    return f();
  } catch (e) {
    throw e instanceof Error ? e.message : String(e);
  }
}

function outcome(result) {
  return result === RETRY ? { tag: 'retry' } : { tag: 'success', val: toData(result) };
}

/**
 * Makes `fn(name, data) -> object | RETRY` the component's handler export.
 * `fn` may be async (return a Promise, e.g. to await fetch()):
 * componentize-js then runs the event loop until the Promise settles.
 */
export function defineHandler(fn) {
  return {
    executeTask(name, inputData) {
      const result = failing(() => fn(name, fromData(inputData)));
      if (typeof result?.then === 'function') {
        return result.then(
          (value) => failing(() => outcome(value)),
          (e) => failing(() => {
            throw e;
          }),
        );
      }
      return failing(() => outcome(result));
    },
  };
}

function kvCall(f) {
  try {
    return f();
  } catch (e) {
    const error = e?.payload ?? e;
    throw new Fail(`kv error: ${JSON.stringify(error, (k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
  }
}

const encoder = new TextEncoder();

/** This handler's durable key-value store. */
export const kv = {
  get: (key) => kvCall(() => wkv.get(key)),
  getString: (key) => {
    const v = kvCall(() => wkv.get(key));
    return v === undefined ? undefined : new TextDecoder().decode(v);
  },
  set: (key, value) => kvCall(() => wkv.set(key, typeof value === 'string' ? encoder.encode(value) : value)),
  delete: (key) => kvCall(() => wkv.delete(key)),
  increment: (key, delta = 1) => int(kvCall(() => wkv.increment(key, BigInt(delta)))),
};

/** Leveled lines in the run's log (console.log goes there too). */
export const log = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, (message) => wlog.write(level, String(message))]),
);

/** The configuration values and secrets granted to this handler. */
export const config = {
  get: (key) => wconfig.get(key),
  keys: () => wconfig.keys(),
};

/** Facts about this run, and progress. */
export const context = {
  taskId: () => wcontext.taskId(),
  attempt: () => wcontext.runAttemptCount(),
  tags: () => wcontext.tags(),
  timeLeftMs: () => Number(wcontext.timeLeftMs()),
  setProgress: (progress) => wcontext.setProgress(toData(progress)),
};
