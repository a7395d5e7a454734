//! A small bounded cache by host name: at most a fixed number of entries,
//! each kept for at most a fixed time, the least recently used one evicted
//! first. The broker keeps its minted leaves in it, so an agent that opens
//! tunnels to many hosts (a `*.example.com` service) cannot grow the broker
//! without bound, and a leaf is never served after it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The most leaf certificates the broker keeps (per cache: the minted
/// certificates, and the TLS configurations made from them).
pub const LEAF_CACHE: usize = 1000;

/// How long a minted leaf is used before a new one is minted (leaves are
/// valid for a day).
pub const LEAF_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

struct Entry<V> {
    value: V,
    made: Instant,
    used: u64,
}

/// A bounded least-recently-used cache keyed by name.
pub struct Lru<V> {
    capacity: usize,
    max_age: Duration,
    clock: u64,
    map: HashMap<String, Entry<V>>,
}

impl<V: Clone> Lru<V> {
    /// An empty cache of at most `capacity` entries (at least one), each
    /// kept at most `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Lru {
            capacity: capacity.max(1),
            max_age,
            clock: 0,
            map: HashMap::new(),
        }
    }

    /// The value for `key`, if cached and not too old.
    pub fn get(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.map.get_mut(key)?;
        if entry.made.elapsed() >= self.max_age {
            self.map.remove(key);
            return None;
        }
        entry.used = clock;
        Some(entry.value.clone())
    }

    /// Keeps `value` for `key`, evicting the least recently used entry if
    /// the cache is full. (Eviction scans the cache: it happens only on a
    /// miss, which costs a key generation anyway.)
    pub fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.map.insert(
            key,
            Entry {
                value,
                made: Instant::now(),
                used: self.clock,
            },
        );
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_least_recently_used_goes_first() {
        let mut c = Lru::new(3, Duration::from_secs(60));
        for h in ["a", "b", "c"] {
            c.insert(h.into(), h.to_owned());
        }
        assert_eq!(c.get("a").as_deref(), Some("a"));
        c.insert("d".into(), "d".into());
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("b"), None, "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some() && c.get("d").is_some());
        for i in 0..10_000 {
            c.insert(format!("h{i}"), String::new());
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn entries_expire() {
        let mut c = Lru::new(3, Duration::ZERO);
        c.insert("a".into(), 1);
        assert_eq!(c.get("a"), None);
        assert!(c.is_empty());
    }
}
