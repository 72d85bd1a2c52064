// echo: the input data becomes the output data.
import { defineHandler } from './workhost.js';

export const handler = defineHandler((name, data) => data);
