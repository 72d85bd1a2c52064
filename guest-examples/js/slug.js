// slug: the input string `title` as a URL slug, through the npm package
// lodash-es (pinned in package-lock.json, bundled by build.mjs).
import { kebabCase } from 'lodash-es';
import { defineHandler, Fail } from './workhost.js';

export const handler = defineHandler((name, data) => {
  if (typeof data.title !== 'string') throw new Fail('give the input string `title`');
  return { slug: kebabCase(data.title) };
});
