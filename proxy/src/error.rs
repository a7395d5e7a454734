//! The broker's start-up and serving failure.

/// A start-up or serving failure, as the message shown to the user.
#[derive(Debug)]
pub struct ProxyError(pub String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

/// `what: error`, as a [`ProxyError`].
pub(crate) fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ProxyError + '_ {
    move |e| ProxyError(format!("{what}: {e}"))
}
