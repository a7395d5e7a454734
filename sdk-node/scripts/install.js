#!/usr/bin/env node
// `npm install` (of this folder, or of ./sdk-node from elsewhere) builds the
// addon: with @napi-rs/cli when it is installed (npm ci here), otherwise with
// cargo directly (a dependent's install does not get our devDependencies).
'use strict'
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const here = path.resolve(__dirname, '..')
const napi = path.join(here, 'node_modules', '.bin', 'napi')
const run = (cmd, args) => execFileSync(cmd, args, { cwd: here, stdio: 'inherit' })

if (fs.existsSync(napi)) {
  run(napi, ['build', '--release', '--dts', 'native.d.ts'])
} else {
  const manifest = path.join(here, 'Cargo.toml')
  run('cargo', ['build', '--release', '--manifest-path', manifest, '-p', 'agent-vault-node'])
  const meta = JSON.parse(
    execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps', '--manifest-path', manifest], {
      cwd: here,
      encoding: 'utf8',
    }),
  )
  const lib = path.join(meta.target_directory, 'release', 'libagent_vault_node.so')
  fs.copyFileSync(lib, path.join(here, 'agent-vault.node'))
}
