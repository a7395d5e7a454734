//! The token the request tool shows the broker. A pasted one
//! (`AGENT_VAULT_TOKEN`) is used as given; with none, the server mints its
//! own with the agent's key (`avt2`) and mints the next once two thirds of
//! the current one's life have passed, so a long-running agent never shows
//! an expired token and needs no owner online.

use std::sync::Mutex;

/// The lifetime the server asks for its own tokens (capped by the vault's
/// `token_max_ttl_seconds`).
pub(crate) const OWN_TOKEN_TTL: i64 = 15 * 60;

/// The lifetime of the server's own tokens, given the vault's cap.
pub(crate) fn own_ttl(max: i64) -> i64 {
    OWN_TOKEN_TTL.min(max).max(1)
}

/// When a token issued at `iat` that expires at `exp` is due for renewal:
/// two thirds into its life.
pub(crate) fn renew_at(iat: i64, exp: i64) -> i64 {
    let life = exp.saturating_sub(iat).max(0);
    iat.saturating_add(life / 3 * 2 + life % 3 * 2 / 3)
}

/// A minted token's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Renew from this time on (Unix seconds).
    pub renew_at: i64,
    /// It expires here.
    pub exp: i64,
}

impl Lease {
    /// The lease of a token issued at `iat`, expiring at `exp`.
    pub(crate) fn new(iat: i64, exp: i64) -> Self {
        Lease {
            renew_at: renew_at(iat, exp),
            exp,
        }
    }
}

/// Holds what was made from the current token (a broker client) and
/// makes a new one when the token is due.
pub(crate) struct Renewing<T> {
    slot: Mutex<Option<(T, Option<Lease>)>>,
}

impl<T: Clone> Renewing<T> {
    pub(crate) fn new() -> Self {
        Renewing {
            slot: Mutex::new(None),
        }
    }

    /// The current value, or a new one from `make` when there is none yet
    /// or its token is due for renewal at `now` (`None`: a pasted token,
    /// never renewed). When renewing fails but the current token has not
    /// expired yet, the current value is kept and the next call tries again.
    pub(crate) fn get<E>(
        &self,
        now: i64,
        make: impl FnOnce() -> Result<(T, Option<Lease>), E>,
    ) -> Result<T, E> {
        // A panic while making cannot leave a half-made value: it is replaced whole.
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((value, lease)) = slot.as_ref()
            && lease.is_none_or(|l| now < l.renew_at)
        {
            return Ok(value.clone());
        }
        match make() {
            Ok((value, lease)) => {
                *slot = Some((value.clone(), lease));
                Ok(value)
            }
            Err(e) => match slot.as_ref() {
                Some((value, Some(l))) if now < l.exp => Ok(value.clone()),
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_two_thirds_into_the_life() {
        assert_eq!(renew_at(1_000, 1_900), 1_600);
        assert_eq!(renew_at(1_000, 1_003), 1_002);
        assert_eq!(renew_at(1_000, 1_001), 1_000);
        assert_eq!(renew_at(1_000, 1_000), 1_000);
        assert_eq!(renew_at(1_000, 900), 1_000);
        assert!(renew_at(0, i64::MAX) > 0);
        assert_eq!(own_ttl(86_400), OWN_TOKEN_TTL);
        assert_eq!(own_ttl(6), 6);
        assert_eq!(own_ttl(0), 1);
    }

    #[test]
    fn a_minted_token_is_renewed_when_due() {
        let r = Renewing::new();
        let mut minted = 0;
        let mut mint = |iat: i64| {
            minted += 1;
            Ok::<_, ()>((format!("t{minted}"), Some(Lease::new(iat, iat + 9))))
        };
        assert_eq!(r.get(100, || mint(100)), Ok("t1".to_string()));
        // Until two thirds of its life (6 of 9 s), the same token.
        for now in 100..106 {
            assert_eq!(r.get(now, || mint(now)), Ok("t1".to_string()), "{now}");
        }
        assert_eq!(r.get(106, || mint(106)), Ok("t2".to_string()));
        assert_eq!(r.get(111, || mint(111)), Ok("t2".to_string()));
        assert_eq!(r.get(112, || mint(112)), Ok("t3".to_string()));
    }

    #[test]
    fn a_failed_renewal_keeps_a_live_token_and_retries() {
        let r: Renewing<&str> = Renewing::new();
        assert_eq!(r.get(0, || Err("down")), Err("down"));
        assert_eq!(
            r.get(0, || Ok::<_, &str>(("t1", Some(Lease::new(0, 9))))),
            Ok("t1")
        );
        // Due, renewal fails, token still alive: keep it.
        assert_eq!(r.get(7, || Err("down")), Ok("t1"));
        // Next call retries.
        assert_eq!(
            r.get(8, || Ok::<_, &str>(("t2", Some(Lease::new(8, 17))))),
            Ok("t2")
        );
        // Due and expired, renewal fails: the failure is reported.
        assert_eq!(r.get(17, || Err("down")), Err("down"));
    }

    #[test]
    fn a_pasted_token_is_never_renewed() {
        let r = Renewing::new();
        assert_eq!(r.get(0, || Ok::<_, ()>(("pasted", None))), Ok("pasted"));
        assert_eq!(
            r.get(i64::MAX, || -> Result<(&str, Option<Lease>), ()> {
                panic!("must not be called")
            }),
            Ok("pasted")
        );
    }
}
