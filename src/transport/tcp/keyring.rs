//! The cluster secrets a mesh accepts, and the one it dials with: rotated
//! live, as memberlist's `keys install / use / remove` do.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hmac::Mac;
use tokio::sync::watch;

use super::HmacSha256;
use crate::transport::TransportError;

/// The shortest cluster secret accepted: 32 bytes, as many as the HMAC's
/// output. A secret is a key, not a passphrase: make it with a random
/// generator (`openssl rand -base64 32`).
pub const MIN_SECRET_LEN: usize = 32;

const LABEL_KEY_ID: &[u8] = b"attn-key-id\0";

/// Names a secret in hellos and logs without revealing it: the first 8
/// bytes of `HMAC-SHA256(secret, "attn-key-id\0")`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    pub(super) fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    pub(super) fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The cluster secrets of a TCP mesh replica: every one is accepted from
/// dialing peers, the primary one is used to dial.
///
/// Clones share one ring, so a running transport (and the
/// [`Tracker`](crate::Tracker) that owns it) can rotate secrets with no
/// restart and no partition:
///
/// 1. [`install`](Self::install) the new secret on every replica;
/// 2. [`use_secret`](Self::use_secret) it on every replica;
/// 3. [`remove`](Self::remove) the old one on every replica. Links that
///    were authenticated with it close and are dialed again with the new
///    one at once.
///
/// ```
/// use attendance::transport::tcp::Keyring;
///
/// let ring = Keyring::new("an old cluster secret of 32 bytes or more")?;
/// let new = ring.install("a new cluster secret, also 32 bytes or more")?;
/// ring.use_secret(new)?;
/// ring.remove(Keyring::key_id("an old cluster secret of 32 bytes or more"))?;
/// assert_eq!(ring.key_ids(), vec![new]);
/// # Ok::<(), attendance::transport::TransportError>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<RwLock<Keys>>,
    /// Bumped by every removal, so links can tell their key went away.
    removals: Arc<watch::Sender<u64>>,
}

struct Keys {
    primary: KeyId,
    secrets: BTreeMap<KeyId, HmacSha256>,
}

impl Keyring {
    /// A ring holding one secret, used to dial and accepted.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for a secret shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, TransportError> {
        let (id, key) = keyed(secret.as_ref())?;
        Ok(Self {
            keys: Arc::new(RwLock::new(Keys {
                primary: id,
                secrets: BTreeMap::from([(id, key)]),
            })),
            removals: Arc::new(watch::Sender::new(0)),
        })
    }

    /// The id a secret is known by.
    pub fn key_id(secret: impl AsRef<[u8]>) -> KeyId {
        // HMAC takes a key of any length.
        let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(secret.as_ref()) else {
            return KeyId([0; 8]);
        };
        mac.update(LABEL_KEY_ID);
        let full = mac.finalize().into_bytes();
        let mut id = [0; 8];
        id.copy_from_slice(&full[..8]);
        KeyId(id)
    }

    /// Accepts one more secret from dialing peers; returns its id.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for a secret shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn install(&self, secret: impl AsRef<[u8]>) -> Result<KeyId, TransportError> {
        let (id, key) = keyed(secret.as_ref())?;
        self.write().secrets.insert(id, key);
        Ok(id)
    }

    /// Dials with the installed secret `id` from now on.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] when no such secret is installed.
    pub fn use_secret(&self, id: KeyId) -> Result<(), TransportError> {
        let mut keys = self.write();
        if !keys.secrets.contains_key(&id) {
            return Err(unknown_key());
        }
        keys.primary = id;
        Ok(())
    }

    /// Stops accepting the secret `id`, and closes the links it
    /// authenticated.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] when `id` is the secret in use (switch
    /// first) or is not installed.
    pub fn remove(&self, id: KeyId) -> Result<(), TransportError> {
        let mut keys = self.write();
        if keys.primary == id {
            return Err(TransportError::Config {
                setting: "keyring",
                requirement: "must keep the secret in use (use another one first)",
            });
        }
        if keys.secrets.remove(&id).is_none() {
            return Err(unknown_key());
        }
        drop(keys);
        self.removals.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The ids of the secrets accepted, in id order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.read().secrets.keys().copied().collect()
    }

    /// The id of the secret used to dial.
    pub fn primary(&self) -> KeyId {
        self.read().primary
    }

    /// The secret used to dial, and its id.
    pub(super) fn dialing_key(&self) -> (KeyId, HmacSha256) {
        let keys = self.read();
        let key = keys.secrets.get(&keys.primary).cloned();
        (
            keys.primary,
            key.expect("the primary secret is never removed"),
        )
    }

    /// The accepted secret `id`, if installed.
    pub(super) fn get(&self, id: KeyId) -> Option<HmacSha256> {
        self.read().secrets.get(&id).cloned()
    }

    /// Whether `id` is still accepted.
    pub(super) fn accepts(&self, id: KeyId) -> bool {
        self.read().secrets.contains_key(&id)
    }

    /// Changes whenever a secret is removed: a link checks its own then.
    pub(super) fn removals(&self) -> watch::Receiver<u64> {
        self.removals.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        // Nothing panics under the lock; the ring is consistent anyway.
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary())
            .field("accepted", &self.key_ids())
            .finish()
    }
}

fn keyed(secret: &[u8]) -> Result<(KeyId, HmacSha256), TransportError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TransportError::Config {
            setting: "secret",
            requirement: "must be at least 32 bytes (a random key, not a passphrase)",
        });
    }
    let key = <HmacSha256 as Mac>::new_from_slice(secret).map_err(|_| TransportError::Config {
        setting: "secret",
        requirement: "must key HMAC-SHA256",
    })?;
    Ok((Keyring::key_id(secret), key))
}

fn unknown_key() -> TransportError {
    TransportError::Config {
        setting: "keyring",
        requirement: "must hold the secret named",
    }
}
