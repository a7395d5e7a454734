import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { test } from 'node:test'
import { pathToFileURL } from 'node:url'

import { makeVault, freshHome, cli, REPO } from './helpers.mjs'

const require = createRequire(import.meta.url)
const sdk = require('..')
const { Vault, VaultError, VaultNotFoundError, SecretNotFoundError, NotAuthorizedError, ManifestError, InvalidNameError } = sdk

test('error classes are exported and related', () => {
  for (const C of [VaultNotFoundError, SecretNotFoundError, NotAuthorizedError, ManifestError, InvalidNameError]) {
    assert.ok(new C('x') instanceof VaultError)
    assert.ok(new C('x') instanceof Error)
  }
})

test('reads what the CLI wrote a moment earlier', async () => {
  const m = makeVault()
  const v = new Vault({ repoPath: m.root, autoPull: false })
  assert.deepEqual(v.whoami(), { role: 'owner', name: 'alice' })
  assert.equal(await v.get('app/api-key'), 'sk_live_first')
  m.run('set', 'app/api-key', 'sk_live_second')
  assert.equal(await v.get('app/api-key'), 'sk_live_second')
  assert.equal(await v.get('ops/token'), 'ops-secret')
})

test('agent: granted group only, use-only refused, stable codes', async () => {
  const m = makeVault()
  const bot = new Vault({ repoPath: m.root, keyPath: m.botKey, autoPull: false })
  assert.deepEqual(bot.whoami(), { role: 'agent', name: 'bot' })
  assert.equal(await bot.get('app/db/password'), 'hunter2')
  await assert.rejects(bot.get('ops/token'), (e) => {
    assert.ok(e instanceof NotAuthorizedError)
    assert.equal(e.code, 'NOT_AUTHORIZED')
    assert.equal(e.message, 'bot is not granted group ops: an owner can run `agent-vault grant bot ops`')
    return true
  })
  const viewer = new Vault({ repoPath: m.root, keyPath: m.viewerKey, autoPull: false })
  await assert.rejects(viewer.get('app/api-key'), (e) => e instanceof NotAuthorizedError && /broker/.test(e.hint))
  await assert.rejects(bot.get('app/nope'), (e) => e instanceof SecretNotFoundError && e.code === 'SECRET_NOT_FOUND' && e.message === 'no secret app/nope')
  for (const bad of ['../etc/passwd', 'app', 'app//x', 'App/x', '']) {
    await assert.rejects(bot.get(bad), (e) => e instanceof InvalidNameError && e.code === 'INVALID_NAME')
  }
  assert.throws(() => new Vault({ repoPath: m.dir }), (e) => e instanceof VaultNotFoundError && e.code === 'VAULT_NOT_FOUND')
  assert.throws(() => new Vault({}), TypeError)
})

test('a revoked agent loses access, in the same open Vault', async () => {
  const m = makeVault()
  const bot = new Vault({ repoPath: m.root, keyPath: m.botKey, autoPull: false })
  assert.equal(await bot.get('app/api-key'), 'sk_live_first')
  m.run('revoke', 'bot', 'app')
  await assert.rejects(bot.get('app/api-key'), NotAuthorizedError)
  m.run('grant', 'bot', 'app')
  assert.equal(await bot.get('app/api-key'), 'sk_live_first')
})

test('tampered manifest is a ManifestError', async () => {
  const m = makeVault()
  const bot = new Vault({ repoPath: m.root, keyPath: m.botKey, autoPull: false })
  const mf = path.join(m.root, '.agent-vault', 'manifest.yaml')
  fs.writeFileSync(mf, fs.readFileSync(mf, 'utf8').replace('viewer:\n    app: use', 'viewer:\n    app: read'))
  await assert.rejects(bot.get('app/api-key'), (e) => e instanceof ManifestError && e.code === 'MANIFEST')
})

test('bytes round-trip, not-UTF-8 text fails clearly, keyStr stays hidden', async () => {
  const m = makeVault()
  const f = path.join(m.dir, 'blob')
  const data = Buffer.concat([Buffer.from([0xff, 0xfe]), crypto.randomBytes(300)])
  fs.writeFileSync(f, data)
  m.run('set', 'app/blob', '--from-file', f)
  const raw = fs.readFileSync(m.botKey, 'utf8').split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-'))
  const v = new Vault({ repoPath: m.root, keyStr: raw, autoPull: false })
  assert.deepEqual(await v.getBuffer('app/blob'), data)
  await assert.rejects(v.get('app/blob'), (e) => e instanceof VaultError && e.code === 'VAULT' && /not UTF-8/.test(e.message))
  const shown = `${v} ${require('node:util').inspect(v)} ${JSON.stringify(v)}`
  assert.ok(!shown.includes('AGE-SECRET-KEY'), shown)
  assert.throws(
    () => new Vault({ repoPath: m.root, keyStr: 'AGE-SECRET-KEY-1NOTAKEY' }),
    (e) => e instanceof VaultError && !e.message.includes('NOTAKEY'),
  )
})

test('listSecrets and listAgents match the CLI', () => {
  const m = makeVault()
  const v = new Vault({ repoPath: m.root, keyPath: m.botKey, autoPull: false })
  const want = JSON.parse(m.run('--json', 'list'))
  const got = v.listSecrets()
  assert.deepEqual(
    got.map((s) => [s.path, s.group, s.name, s.created, s.updated, s.expires ?? null, s.description ?? null, s.generation]),
    want.map((w) => [w.path, w.group, w.name, w.created, w.updated, w.expires, w.description, w.generation]),
  )
  assert.deepEqual(v.listSecrets('ops').map((s) => s.expires), ['2099-12-31T00:00:00Z'])
  const agents = JSON.parse(m.run('--json', 'list-agents'))
  assert.deepEqual(
    v.listAgents().map((a) => [a.name, a.recipient, { ...a.grants }]),
    agents.map((a) => [a.name, a.recipient, a.grants]),
  )
})

test('close drops the key; later calls throw', async () => {
  const m = makeVault()
  const v = new Vault({ repoPath: m.root, keyPath: m.botKey, autoPull: false })
  assert.equal(await v.get('app/api-key'), 'sk_live_first')
  v.close()
  assert.ok(v.closed)
  await assert.rejects(v.get('app/api-key'), (e) => e instanceof VaultError && /closed/.test(e.message))
  assert.throws(() => v.whoami(), /closed/)
})

test('concurrent promises on one Vault, off the event loop', async () => {
  const m = makeVault()
  const v = new Vault({ repoPath: m.root, keyPath: m.botKey, autoPull: false })
  let ticks = 0
  const timer = setInterval(() => ticks++, 0)
  const paths = Array.from({ length: 400 }, (_, i) => (i % 2 ? 'app/db/password' : 'app/api-key'))
  const got = await Promise.all(paths.map((p) => v.get(p)))
  clearInterval(timer)
  assert.deepEqual(got, paths.map((p) => (p === 'app/api-key' ? 'sk_live_first' : 'hunter2')))
  const mixed = await Promise.allSettled([v.get('app/api-key'), v.get('ops/token'), v.getBuffer('app/db/password')])
  assert.equal(mixed[0].value, 'sk_live_first')
  assert.ok(mixed[1].reason instanceof NotAuthorizedError)
  assert.equal(mixed[2].value.toString(), 'hunter2')
})

test('a git URL vault is cloned under AGENT_VAULT_HOME and pulled', async () => {
  const m = makeVault()
  const bare = path.join(m.dir, 'remote.git')
  execFileSync('git', ['init', '--bare', '-q', bare])
  execFileSync('git', ['-C', m.root, 'remote', 'add', 'origin', pathToFileURL(bare).href])
  m.run('push')
  const url = pathToFileURL(bare).href
  const v = new Vault({ repoPath: url, keyPath: m.botKey })
  const clone = path.join(m.home, 'clones', crypto.createHash('sha256').update(url).digest('hex'))
  assert.equal(fs.realpathSync(v.root), fs.realpathSync(clone))
  assert.equal(await v.get('app/api-key'), 'sk_live_first')
  m.run('set', 'app/api-key', 'sk_live_pushed')
  m.run('push')
  assert.equal(await v.pull(), 'fast-forward')
  assert.equal(await v.get('app/api-key'), 'sk_live_pushed')
  assert.equal(await v.pull(), 'up-to-date')
  m.run('revoke', 'bot', 'app')
  m.run('push')
  const w = new Vault({ repoPath: url, keyPath: m.botKey })
  await assert.rejects(w.get('app/api-key'), NotAuthorizedError)
})

test('a bad URL is a VaultNotFoundError', () => {
  const { dir } = freshHome()
  assert.throws(() => new Vault({ repoPath: pathToFileURL(path.join(dir, 'none.git')).href }), VaultNotFoundError)
})

test('a format 1 vault (tests/vectors/v1) reads as it is and after an owner write migrates it', async () => {
  const { dir, home } = freshHome()
  const v1 = path.join(REPO, 'tests', 'vectors', 'v1')
  const root = path.join(dir, 'vault')
  fs.cpSync(path.join(v1, 'vault'), root, { recursive: true })
  fs.cpSync(path.join(v1, 'home'), home, { recursive: true })
  const [id] = fs.readdirSync(path.join(home, 'keys'))
  const keyOf = (who) => (who === 'owner' ? path.join(home, 'keys', id, 'owner.key') : path.join(home, 'keys', id, 'agents', `${who}.key`))
  for (const f of [keyOf('owner'), keyOf('reader'), keyOf('gone')]) fs.chmodSync(f, 0o600)
  const expected = JSON.parse(fs.readFileSync(path.join(v1, 'expected.json'), 'utf8'))
  const format = () => fs.readFileSync(path.join(root, '.agent-vault', 'config.yaml'), 'utf8').match(/^format: (\d+)$/m)[1]
  const readsAlike = async () => {
    for (const [p, b64] of Object.entries(expected.values)) {
      const v = new Vault({ repoPath: root, keyPath: keyOf('owner'), autoPull: false })
      assert.equal((await v.getBuffer(p)).toString('base64'), b64, p)
      v.close()
    }
    const r = new Vault({ repoPath: root, keyPath: keyOf('reader'), autoPull: false })
    for (const p of expected.reader_may_read) assert.equal((await r.getBuffer(p)).toString('base64'), expected.values[p], p)
    r.close()
    const g = new Vault({ repoPath: root, keyPath: keyOf('gone'), autoPull: false })
    for (const p of expected.gone_may_not_read) await assert.rejects(g.getBuffer(p), NotAuthorizedError)
    g.close()
  }
  assert.equal(format(), '1')
  await readsAlike()
  assert.equal(format(), '1')
  cli(['--vault', root, '--key', keyOf('owner'), '--offline', 'set', 'ops/after'], { input: 'after' })
  assert.equal(format(), '2')
  await readsAlike()
})
