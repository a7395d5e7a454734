// Hand-written types of agent-vault for Node (index.js). Checked against the
// generated native.d.ts (napi build) and by tests/types.test.mjs.

export interface VaultOptions {
  /** A directory in (or under) the vault, or a git URL, cloned into $AGENT_VAULT_HOME/clones. */
  repoPath: string
  /** A key file. */
  keyPath?: string
  /** A raw `AGE-SECRET-KEY-1…` (or a key file's path), kept in native memory only. */
  keyStr?: string
  /** Pull before reads, at most once per the vault's interval, never failing the read. Default true. */
  autoPull?: boolean
}

export interface SecretMetadata {
  /** `group/name`. */
  path: string
  group: string
  name: string
  /** RFC 3339, as `agent-vault list --json` prints it; absent when `error` is set. */
  created?: string
  updated?: string
  expires?: string
  description?: string
  /** The group key generation the value is encrypted to. */
  generation?: number
  /** Why the metadata could not be read. */
  error?: string
}

export interface AgentInfo {
  name: string
  /** The agent's age recipient (public). */
  recipient: string
  /** Group → mode. */
  grants: Record<string, 'read' | 'use'>
}

export interface Principal {
  role: 'owner' | 'agent'
  name: string
}

export type PullOutcome = 'no-remote' | 'up-to-date' | 'fast-forward'

export type ErrorCode =
  | 'VAULT_NOT_FOUND'
  | 'SECRET_NOT_FOUND'
  | 'NOT_AUTHORIZED'
  | 'MANIFEST'
  | 'INVALID_NAME'
  | 'VAULT'

export declare class VaultError extends Error {
  /** Stable across releases. */
  readonly code: ErrorCode
  /** What to do about it, as the CLI says it. */
  readonly hint: string | null
}
export declare class VaultNotFoundError extends VaultError {}
export declare class SecretNotFoundError extends VaultError {}
export declare class NotAuthorizedError extends VaultError {}
export declare class ManifestError extends VaultError {}
export declare class InvalidNameError extends VaultError {}

export declare class Vault {
  /** Opens the vault, loads the key and verifies the manifest; throws a VaultError. */
  constructor(options: VaultOptions)
  /** The value as UTF-8 text (a VaultError if it is not UTF-8); read off the event loop. */
  get(path: string): Promise<string>
  /** The value as bytes, exactly as set; read off the event loop. */
  getBuffer(path: string): Promise<Buffer>
  /** Fetch and fast-forward the vault's clone; never merges. */
  pull(): Promise<PullOutcome>
  /** Secrets (of one group, or all) with metadata, sorted by path. */
  listSecrets(group?: string): SecretMetadata[]
  /** Agents and their grants. */
  listAgents(): AgentInfo[]
  /** Who the key belongs to. */
  whoami(): Principal
  /** Drops the key and the reader; later calls throw. */
  close(): void
  readonly closed: boolean
  /** The directory holding `.agent-vault`. */
  readonly root: string
  toString(): string
  [Symbol.dispose](): void
}
