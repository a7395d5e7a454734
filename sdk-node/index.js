'use strict'
// agent-vault for Node: the native addon (napi-rs, over the same Rust core
// as the CLI) behind error classes with a stable `code`.

const native = require('./agent-vault.node')

const MARK = 'AGENT_VAULT_ERROR'

/** Base class of every agent-vault error. */
class VaultError extends Error {
  constructor(message, code = 'VAULT', hint = null) {
    super(message)
    this.name = new.target.name
    /** Stable code: VAULT_NOT_FOUND, SECRET_NOT_FOUND, NOT_AUTHORIZED, MANIFEST, INVALID_NAME, VAULT. */
    this.code = code
    /** What to do about it, as the CLI says it. */
    this.hint = hint
  }
}
class VaultNotFoundError extends VaultError {}
class SecretNotFoundError extends VaultError {}
class NotAuthorizedError extends VaultError {}
class ManifestError extends VaultError {}
class InvalidNameError extends VaultError {}

const CLASSES = {
  VAULT_NOT_FOUND: VaultNotFoundError,
  SECRET_NOT_FOUND: SecretNotFoundError,
  NOT_AUTHORIZED: NotAuthorizedError,
  MANIFEST: ManifestError,
  INVALID_NAME: InvalidNameError,
  VAULT: VaultError,
}

function convert(err) {
  if (err && typeof err.message === 'string' && err.message.startsWith(MARK)) {
    let body
    try {
      body = JSON.parse(err.message.slice(MARK.length))
    } catch {
      return err
    }
    const Cls = CLASSES[body.code] || VaultError
    return new Cls(body.message, body.code, body.hint ?? null)
  }
  return err
}

function call(fn) {
  try {
    return fn()
  } catch (e) {
    throw convert(e)
  }
}

/** A vault opened with a key. */
class Vault {
  #native
  #origin

  /**
   * @param {{repoPath: string, keyPath?: string, keyStr?: string, autoPull?: boolean}} options
   */
  constructor(options) {
    if (options === null || typeof options !== 'object' || typeof options.repoPath !== 'string') {
      throw new TypeError('new Vault({ repoPath, keyPath?, keyStr?, autoPull? }): repoPath must be a string')
    }
    const { repoPath, keyPath, keyStr, autoPull } = options
    this.#origin = repoPath
    this.#native = call(
      () =>
        new native.NativeVault({
          repoPath,
          keyPath: keyPath ?? undefined,
          keyStr: keyStr ?? undefined,
          autoPull: autoPull ?? true,
        }),
    )
    this.#warn()
  }

  #warn() {
    for (const w of this.#native.takeWarnings()) process.emitWarning(w, 'AgentVaultWarning')
  }

  async #async(fn) {
    try {
      return await fn()
    } catch (e) {
      throw convert(e)
    } finally {
      this.#warn()
    }
  }

  /** The value as UTF-8 text; read on the thread pool. */
  get(path) {
    return this.#async(() => this.#native.get(String(path)))
  }

  /** The value as a Buffer, exactly as set; read on the thread pool. */
  getBuffer(path) {
    return this.#async(() => this.#native.getBuffer(String(path)))
  }

  /** Fetch and fast-forward: "no-remote", "up-to-date" or "fast-forward". */
  pull() {
    return this.#async(() => this.#native.pull())
  }

  /** Secrets (of one group, or all) with metadata, sorted by path. */
  listSecrets(group) {
    return call(() => this.#native.listSecrets(group ?? undefined))
  }

  /** Agents and their grants, from the verified manifest. */
  listAgents() {
    return call(() => this.#native.listAgents())
  }

  /** Who the key belongs to: { role: "owner" | "agent", name }. */
  whoami() {
    return call(() => this.#native.whoami())
  }

  /** Drops the key (zeroized in native memory) and the reader. */
  close() {
    this.#native.close()
  }

  get closed() {
    return this.#native.closed
  }

  /** The directory holding `.agent-vault`. */
  get root() {
    return this.#native.root
  }

  toString() {
    return `Vault(${JSON.stringify(this.#origin)}${this.closed ? ', closed' : ''})`
  }

  [Symbol.for('nodejs.util.inspect.custom')]() {
    return this.toString()
  }
}

if (typeof Symbol.dispose === 'symbol') {
  Vault.prototype[Symbol.dispose] = function () {
    this.close()
  }
}

module.exports = {
  Vault,
  VaultError,
  VaultNotFoundError,
  SecretNotFoundError,
  NotAuthorizedError,
  ManifestError,
  InvalidNameError,
}
