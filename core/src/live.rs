//! The live reader: one vault, one key, followed while it changes. Every
//! long-running reader (the broker, the MCP server, the SDKs) and the CLI's
//! `get` read through it, so "notice that the vault changed" and "wait for a
//! writer in the middle of an operation" are written once, here.
//!
//! - **Staleness.** A [`Reader`] is the vault on the manifest files as they
//!   were when it read them (their stamp: inode, length and time of each).
//!   The live reader looks at the stamp again when its last look is older
//!   than the `recheck` it was opened with ([`Duration::ZERO`]: at every
//!   call; the broker: [`RECHECK`]); a changed stamp means a new [`Reader`],
//!   and only a manifest that verifies replaces the last one. Values are not stamped:
//!   [`Reader::get`] reads the secret's files every time and keeps what it
//!   decrypted or checked by their exact bytes, so a warm read opens no key
//!   and checks no signature.
//! - **A writer mid-operation.** Readers take no lock. A read that races a
//!   writer can see files of two generations (a rotated group key before the
//!   manifest, a manifest before its signature). While the writer's journal
//!   is present such a failure is tried again, every 20 ms for at most 2 s;
//!   a failure on files that changed since the reader read them is tried
//!   again at once on the new files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::crypto::{Identity, SecretValue};
use crate::error::{Error, Result};
use crate::keystore::KeySource;
use crate::names::SecretPath;
use crate::reader::Reader;
use crate::vault::Vault;

/// How long a long-running server (the broker) goes on with the manifest,
/// the services list and the values it read before it looks at the files
/// again: a change reaches it within this time, and in between a request
/// makes no file system call at all.
pub const RECHECK: Duration = Duration::from_millis(250);

/// How many times a read that failed during a writer's operation is tried.
const WAIT_TRIES: u32 = 100;
/// The pause between two of those tries (so the wait is at most 2 s).
const WAIT_PAUSE: Duration = Duration::from_millis(20);

/// A vault followed while it changes: the current [`Reader`], replaced when
/// the manifest files change, and reads that wait out a writer's operation.
/// `Send + Sync`: one live reader serves many threads.
pub struct LiveReader {
    vault: Arc<Vault>,
    recheck: Duration,
    /// The clock `checked_ms` counts from.
    started: Instant,
    /// When the stamp was last looked at (ms after `started`).
    checked_ms: AtomicU64,
    current: RwLock<Arc<Reader>>,
    /// Held while a new reader is made, so concurrent calls make one.
    rereading: Mutex<()>,
}

impl std::fmt::Debug for LiveReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveReader")
            .field("root", &self.vault.root())
            .field("recheck", &self.recheck)
            .finish_non_exhaustive()
    }
}

impl LiveReader {
    /// Opens the vault with the key, waiting out a writer's operation; the
    /// files are looked at again once `recheck` has passed since the last
    /// look ([`Duration::ZERO`]: at every call).
    pub fn open(vault: Vault, key: &KeySource, recheck: Duration) -> Result<Self> {
        let vault = Arc::new(vault);
        let first = wait_for_writer(&vault, |_| Reader::open_shared(vault.clone(), key))?;
        Ok(Self::from_first(vault, first, recheck))
    }

    /// [`LiveReader::open`] with a key already loaded (the broker's).
    pub fn with_identity(vault: Vault, id: Identity, recheck: Duration) -> Result<Self> {
        let vault = Arc::new(vault);
        let id = Arc::new(id);
        let first = wait_for_writer(&vault, |_| Reader::with_identity(vault.clone(), id.clone()))?;
        Ok(Self::from_first(vault, first, recheck))
    }

    fn from_first(vault: Arc<Vault>, first: Reader, recheck: Duration) -> Self {
        LiveReader {
            vault,
            recheck,
            started: Instant::now(),
            checked_ms: AtomicU64::new(0),
            current: RwLock::new(Arc::new(first)),
            rereading: Mutex::new(()),
        }
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The last reader whose manifest verified, without looking at the files.
    pub fn last(&self) -> Arc<Reader> {
        // A reader is replaced whole: a poisoned lock still holds a good one.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The reader on the files as they are, looked at if `recheck` has
    /// passed, waiting out a writer's operation. An error when they changed
    /// and the new manifest does not verify ([`LiveReader::last`] still has
    /// the last one that did).
    pub fn current(&self) -> Result<Arc<Reader>> {
        wait_for_writer(&self.vault, |again| self.look(again))
    }

    /// The reader on the files as they are now, looked at whatever the
    /// `recheck` (waiting out a writer's operation): for a caller that
    /// knows the files just changed (the broker after it pulled), so the
    /// change is seen at once rather than at the next look.
    pub fn refresh(&self) -> Result<Arc<Reader>> {
        wait_for_writer(&self.vault, |_| self.look(true))
    }

    /// A reader other than `seen`, if the files are due to be looked at and
    /// the live reader's current one is not `seen` (the files changed, or
    /// another caller saw them change). Between two looks this touches no
    /// lock and no file: the broker asks it on every request.
    pub fn changed_since(&self, seen: &Reader) -> Result<Option<Arc<Reader>>> {
        if !self.due() {
            return Ok(None);
        }
        let current = self.look(true)?;
        Ok((!std::ptr::eq(&*current, seen)).then_some(current))
    }

    /// Runs `f` on the current reader. A failure on files that changed
    /// since that reader read them is tried again on the new files; one
    /// that a writer mid-operation can cause is tried again after a pause
    /// while the writer's journal is present.
    pub fn read<T>(&self, f: impl Fn(&Reader) -> Result<T>) -> Result<T> {
        let mut look_now = false;
        let mut tries = 0;
        loop {
            let err = match self.look(look_now) {
                Ok(reader) => match f(&reader) {
                    Ok(v) => return Ok(v),
                    Err(_) if tries < WAIT_TRIES && reader.stale() => {
                        tries += 1;
                        look_now = true;
                        continue;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !wait_again(&self.vault, tries, &err) {
                return Err(err);
            }
            tries += 1;
            look_now = true;
            std::thread::sleep(WAIT_PAUSE);
        }
    }

    /// A secret's value (see [`Reader::get`]), read as [`LiveReader::read`] says.
    pub fn get(&self, path: &SecretPath) -> Result<SecretValue> {
        self.read(|r| r.get(path))
    }

    /// The current reader; with `now`, or once `recheck` has passed, after
    /// looking at the files (one caller looks, the others go on with the
    /// current one).
    fn look(&self, now: bool) -> Result<Arc<Reader>> {
        let current = self.last();
        if !now && !self.due() {
            return Ok(current);
        }
        if !current.stale() {
            return Ok(current);
        }
        let _one = self
            .rereading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.last();
        if !current.stale() {
            // Another caller made it meanwhile.
            return Ok(current);
        }
        let fresh = Arc::new(current.reread()?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// Whether this call looks at the files: at every call when `recheck`
    /// is zero, else when it has passed since the last look, and then only
    /// for the one caller that moves the time of the last look.
    fn due(&self) -> bool {
        if self.recheck.is_zero() {
            return true;
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= self.recheck.as_millis() as u64
            && self
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Whether a writer in the middle of an operation can cause this failure:
/// a manifest written before its signature, a rotated group key before the
/// manifest that names it, a secret re-encrypted before its metadata.
fn mid_write(e: &Error) -> bool {
    matches!(
        e,
        Error::UnsignedManifest(_)
            | Error::UnsignedSecret { .. }
            | Error::Decrypt { .. }
            | Error::Corrupt { .. }
            | Error::GroupNotFound(_)
            | Error::Io { .. }
    )
}

/// Whether a failure is tried again after a pause: tries remain, a writer
/// mid-operation can cause it and a writer's journal is present.
fn wait_again(vault: &Vault, tries: u32, e: &Error) -> bool {
    tries < WAIT_TRIES && mid_write(e) && vault.has_pending_operation()
}

/// `attempt`, tried again while it fails as a writer mid-operation can make
/// it fail and that writer's journal is present (`attempt(true)` on a retry).
fn wait_for_writer<T>(vault: &Vault, mut attempt: impl FnMut(bool) -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match attempt(tries > 0) {
            Err(e) if wait_again(vault, tries, &e) => {
                tries += 1;
                std::thread::sleep(WAIT_PAUSE);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use age::secrecy::ExposeSecret;

    use super::*;
    use crate::keystore::KeyStore;
    use crate::model::Mode;
    use crate::names::{AgentName, GroupName};
    use crate::writer::SetOptions;

    /// A vault with `g/a` = "first", agent `bot` reading group `g`.
    struct Fixture {
        _tmp: tempfile::TempDir,
        vault: Vault,
        owner: KeySource,
        bot: KeySource,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyStore::at(tmp.path().join("home"));
        let made =
            crate::init::init(&tmp.path().join("v"), "alice".parse().unwrap(), keys).unwrap();
        let owner = KeySource::File(made.owner_key.clone());
        let mut w = crate::writer::Writer::open(&made.vault, &owner).unwrap();
        w.set(&path(), b"first", &SetOptions::default()).unwrap();
        let bot = KeySource::File(w.add_agent(&agent()).unwrap());
        w.grant(&agent(), &group(), Mode::Read).unwrap();
        drop(w);
        Fixture {
            _tmp: tmp,
            vault: made.vault,
            owner,
            bot,
        }
    }

    fn path() -> SecretPath {
        "g/a".parse().unwrap()
    }
    fn agent() -> AgentName {
        "bot".parse().unwrap()
    }
    fn group() -> GroupName {
        "g".parse().unwrap()
    }
    fn value(live: &LiveReader) -> Vec<u8> {
        live.get(&path()).unwrap().expose_secret().clone()
    }

    #[test]
    fn a_changed_manifest_is_seen() {
        let f = fixture();
        let live = LiveReader::open(f.vault.clone(), &f.bot, Duration::ZERO).unwrap();
        assert_eq!(value(&live), b"first");
        let before = live.last();
        crate::writer::Writer::open(&f.vault, &f.owner)
            .unwrap()
            .revoke(&agent(), &group())
            .unwrap();
        assert!(matches!(live.get(&path()), Err(Error::NotGranted { .. })));
        assert!(!Arc::ptr_eq(&before, &live.last()));
        crate::writer::Writer::open(&f.vault, &f.owner)
            .unwrap()
            .grant(&agent(), &group(), Mode::Use)
            .unwrap();
        assert!(matches!(live.get(&path()), Err(Error::UseOnly { .. })));
        assert_eq!(
            live.current().unwrap().manifest().grant(&agent(), &group()),
            Some(Mode::Use)
        );
    }

    #[test]
    fn a_recheck_interval_keeps_the_reader_until_it_has_passed() {
        let f = fixture();
        // An interval that never passes during the test: the files are not looked at.
        let held = LiveReader::open(f.vault.clone(), &f.owner, Duration::from_secs(3600)).unwrap();
        let short = LiveReader::open(f.vault.clone(), &f.owner, Duration::from_millis(20)).unwrap();
        let (held_first, short_first) = (held.current().unwrap(), short.current().unwrap());
        crate::writer::Writer::open(&f.vault, &f.owner)
            .unwrap()
            .grant(&agent(), &group(), Mode::Use)
            .unwrap();
        assert!(Arc::ptr_eq(&held_first, &held.current().unwrap()));
        assert_eq!(
            held.last().manifest().grant(&agent(), &group()),
            Some(Mode::Read)
        );
        std::thread::sleep(Duration::from_millis(40));
        let now = short.current().unwrap();
        assert!(!Arc::ptr_eq(&short_first, &now));
        assert_eq!(now.manifest().grant(&agent(), &group()), Some(Mode::Use));
        // A manifest changed without an owner's signature is an error when
        // looked at; the last one that verified stays.
        let m = f.vault.dir().join("manifest.yaml");
        let mut bytes = std::fs::read(&m).unwrap();
        bytes.extend_from_slice(b"\n# pushed by someone\n");
        std::fs::write(&m, bytes).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(short.current(), Err(Error::UnsignedManifest(_))));
        assert!(Arc::ptr_eq(&now, &short.last()));
    }

    #[test]
    fn a_writer_mid_operation_is_waited_for() {
        let f = fixture();
        let live = LiveReader::open(f.vault.clone(), &f.bot, Duration::ZERO).unwrap();
        let sig = f.vault.dir().join("manifest.sig");
        let held = f.vault.dir().join("manifest.sig.held");
        let journal = f.vault.journal_path();
        std::fs::create_dir_all(journal.parent().unwrap()).unwrap();

        // No writer at work: a manifest without its signature is refused at once.
        std::fs::rename(&sig, &held).unwrap();
        assert!(matches!(live.get(&path()), Err(Error::UnsignedManifest(_))));

        // A writer's journal is there, the signature not yet: the read waits
        // until the writer puts it in place, then reads.
        std::fs::write(&journal, b"{}").unwrap();
        let restored = Arc::new(AtomicBool::new(false));
        let writer = {
            let (restored, sig, held, journal) =
                (restored.clone(), sig.clone(), held.clone(), journal.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                restored.store(true, Ordering::SeqCst);
                std::fs::rename(&held, &sig).unwrap();
                std::fs::remove_file(&journal).unwrap();
            })
        };
        assert_eq!(value(&live), b"first");
        assert!(restored.load(Ordering::SeqCst));
        writer.join().unwrap();

        // Opening waits the same way.
        std::fs::rename(&sig, &held).unwrap();
        std::fs::write(&journal, b"{}").unwrap();
        let restored = Arc::new(AtomicBool::new(false));
        let writer = {
            let restored = restored.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                restored.store(true, Ordering::SeqCst);
                std::fs::rename(&held, &sig).unwrap();
                std::fs::remove_file(&journal).unwrap();
            })
        };
        let opened = LiveReader::open(f.vault.clone(), &f.bot, Duration::ZERO).unwrap();
        assert!(restored.load(Ordering::SeqCst));
        assert_eq!(value(&opened), b"first");
        writer.join().unwrap();
    }

    #[test]
    fn a_warm_get_reads_from_the_cache() {
        let f = fixture();
        let live = LiveReader::open(f.vault.clone(), &f.bot, Duration::ZERO).unwrap();
        assert_eq!(value(&live), b"first");
        let reader = live.last();
        let cold = reader.work();
        // The group key opened, the signature checked, the value decrypted.
        assert_eq!(cold, 3);
        for _ in 0..3 {
            assert_eq!(value(&live), b"first");
        }
        assert!(Arc::ptr_eq(&reader, &live.last()));
        assert_eq!(reader.work(), cold);
        // A new value (a `set` leaves the manifest alone) misses the cache
        // and is checked and decrypted; the group key is still open.
        crate::writer::Writer::open(&f.vault, &f.owner)
            .unwrap()
            .set(&path(), b"second", &SetOptions::default())
            .unwrap();
        assert_eq!(value(&live), b"second");
        assert!(Arc::ptr_eq(&reader, &live.last()));
        assert_eq!(reader.work(), cold + 2);
    }
}
