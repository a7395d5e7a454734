#!/usr/bin/env node
// Warm in-process `await vault.get()` of one secret through the Node SDK:
//   node bench/sdk.mjs --vault DIR --key FILE --path app/api-key [--runs 5000]
// Each run is one awaited get (a round trip through libuv's thread pool),
// timed alone with process.hrtime.bigint; the first 200 are not counted.
import { createRequire } from 'node:module'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const here = path.dirname(fileURLToPath(import.meta.url))
const { Vault } = require(path.join(here, '..', 'sdk-node'))

const { values: a } = parseArgs({
  options: {
    vault: { type: 'string' },
    key: { type: 'string' },
    path: { type: 'string' },
    runs: { type: 'string', default: '5000' },
    warmup: { type: 'string', default: '200' },
    'auto-pull': { type: 'boolean', default: false },
  },
})
const v = new Vault({ repoPath: a.vault, keyPath: a.key, autoPull: a['auto-pull'] })
const expect = await v.get(a.path)
for (let i = 0; i < Number(a.warmup); i++) await v.get(a.path)
const ns = []
for (let i = 0; i < Number(a.runs); i++) {
  const t0 = process.hrtime.bigint()
  const val = await v.get(a.path)
  ns.push(Number(process.hrtime.bigint() - t0))
  if (val !== expect) throw new Error('value changed')
}
const us = ns.map((x) => x / 1000).sort((x, y) => x - y)
const r = (x) => Math.round(x * 10) / 10
const mid = us.length >> 1
const median = us.length % 2 ? us[mid] : (us[mid - 1] + us[mid]) / 2
console.log(
  JSON.stringify({
    label: 'node' + (a['auto-pull'] ? ' (autoPull)' : ''),
    runs: us.length,
    median_us: r(median),
    p90_us: r(us[Math.floor(us.length * 0.9)]),
    min_us: r(us[0]),
    mean_us: r(us.reduce((s, x) => s + x, 0) / us.length),
  }),
)
