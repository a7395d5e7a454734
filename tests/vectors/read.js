#!/usr/bin/env node
// The Node side of the cross-language vectors test (sdk-python/tests/test_vectors.py):
// reads {vault, cases: [{keyPath, path}], listWith} as JSON on stdin, opens the
// vault with the Node SDK per case, and prints what happened as JSON.
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { Vault } = require(process.env.AGENT_VAULT_NODE_SDK || path.join(__dirname, '..', '..', 'sdk-node'))

function failure(e) {
  return { ok: false, code: e.code ?? null, message: e.message, cls: e.constructor.name }
}

async function main() {
  const input = JSON.parse(fs.readFileSync(0, 'utf8'))
  const results = []
  for (const c of input.cases) {
    let v
    try {
      v = new Vault({ repoPath: input.vault, keyPath: c.keyPath, autoPull: false })
    } catch (e) {
      results.push(failure(e))
      continue
    }
    try {
      const buf = await v.getBuffer(c.path)
      results.push({ ok: true, base64: buf.toString('base64'), whoami: v.whoami() })
    } catch (e) {
      results.push(failure(e))
    } finally {
      v.close()
    }
  }
  let list = null
  let agents = null
  if (input.listWith) {
    const v = new Vault({ repoPath: input.vault, keyPath: input.listWith, autoPull: false })
    list = v.listSecrets()
    agents = v.listAgents()
    v.close()
  }
  process.stdout.write(JSON.stringify({ results, list, agents }))
}

main().catch((e) => {
  console.error(e)
  process.exit(2)
})
