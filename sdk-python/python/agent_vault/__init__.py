"""Read agent-vault secrets from Python, through the same Rust core as the CLI.

    from agent_vault import Vault

    with Vault("/path/to/repo", key_path="~/.agent-vault/keys/<id>/agents/bot.key") as v:
        token = v.get("stripe/api-key")

Key resolution is the CLI's: ``key_path``, else ``key_str``, else
``$AGENT_VAULT_KEY`` (a key file's path or the key itself), else this
vault's owner key under ``$AGENT_VAULT_HOME``.
"""

from agent_vault._native import (
    AgentInfo,
    InvalidNameError,
    ManifestError,
    NotAuthorizedError,
    Principal,
    SecretMetadata,
    SecretNotFoundError,
    Vault,
    VaultError,
    VaultNotFoundError,
    __version__,
)

__all__ = [
    "Vault",
    "SecretMetadata",
    "AgentInfo",
    "Principal",
    "VaultError",
    "VaultNotFoundError",
    "SecretNotFoundError",
    "NotAuthorizedError",
    "ManifestError",
    "InvalidNameError",
    "__version__",
]
