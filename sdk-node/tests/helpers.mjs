// Test helpers: a private AGENT_VAULT_HOME per test, and vaults the CLI writes.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

export function cliBin() {
  const b = process.env.AGENT_VAULT_BIN || path.join(REPO, 'target', 'debug', 'agent-vault')
  fs.accessSync(b, fs.constants.X_OK)
  return b
}

/** A fresh AGENT_VAULT_HOME, set in this process's environment (the addon reads it). */
export function freshHome() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'av-node-'))
  const home = path.join(dir, 'home')
  fs.mkdirSync(home, { mode: 0o700 })
  for (const k of Object.keys(process.env)) if (k.startsWith('AGENT_VAULT_')) delete process.env[k]
  process.env.AGENT_VAULT_HOME = home
  Object.assign(process.env, {
    GIT_AUTHOR_NAME: 'sdk-test',
    GIT_AUTHOR_EMAIL: 'sdk-test@example.invalid',
    GIT_COMMITTER_NAME: 'sdk-test',
    GIT_COMMITTER_EMAIL: 'sdk-test@example.invalid',
  })
  return { dir, home }
}

export function cli(args, { cwd, input } = {}) {
  return execFileSync(cliBin(), args, { cwd, input, env: process.env, stdio: ['pipe', 'pipe', 'pipe'] })
}

/** Owner alice; bot reads app; viewer may only use app. */
export function makeVault() {
  const { dir, home } = freshHome()
  const root = path.join(dir, 'vault')
  cli(['init', root, '--owner', 'alice'])
  const run = (...a) => cli(a, { cwd: root })
  run('set', 'app/api-key', 'sk_live_first')
  run('set', 'app/db/password', 'hunter2', '--description', 'db')
  run('set', 'ops/token', 'ops-secret', '--expires', '2099-12-31')
  const botKey = JSON.parse(run('--json', 'add-agent', 'bot')).key_file
  const viewerKey = JSON.parse(run('--json', 'add-agent', 'viewer')).key_file
  run('grant', 'bot', 'app')
  run('grant', 'viewer', 'app', '--mode', 'use')
  return { dir, home, root, run, botKey, viewerKey }
}
