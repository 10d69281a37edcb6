//! Encryption at rest: the values of the `jobs` table (headers and payloads, where the citizen data
//! the flows must send lives) and of the `records` table are sealed with ChaCha20-Poly1305 before they
//! reach the engine, and opened when read. Indexes hold only ids, times and dossier codes.
//!
//! A sealed value is `[0xE1][key id: 4][nonce: 12][ciphertext + tag]`; the associated data is the
//! table and the key it is stored under, so a value moved to another key does not open. The key id is
//! the first 4 bytes of SHA-256 of the key. Keys are given newest first: new writes use the first,
//! reads find theirs by id, so rotating is "add the new key in front, keep the old ones until every
//! entry written under them is gone" (finished jobs after retention; records when rewritten or expired).
//! A value that does not start with the marker was written without encryption and is read as it is,
//! so encryption can be turned on for an existing store.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use super::keys::Table;
use super::{Entries, KvRead, KvWrite, Order};
use crate::queue::store::StoreError;

const MARKER: u8 = 0xE1;
const HEADER: usize = 1 + 4 + 12;

/// The keys, newest first.
pub struct Keyring {
    keys: Vec<([u8; 4], ChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self
            .keys
            .iter()
            .map(|(id, _)| crate::hex::encode(id))
            .collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// From 32-byte keys, newest first. None for an empty list.
    pub fn new(keys: &[[u8; 32]]) -> Option<Keyring> {
        if keys.is_empty() {
            return None;
        }
        Some(Keyring {
            keys: keys
                .iter()
                .map(|k| {
                    let digest = Sha256::digest(k);
                    let id = [digest[0], digest[1], digest[2], digest[3]];
                    (id, ChaCha20Poly1305::new(Key::from_slice(k)))
                })
                .collect(),
        })
    }

    /// The id of the key new writes use (hex), for logs and `check-config`.
    pub fn current_id(&self) -> String {
        crate::hex::encode(&self.keys[0].0)
    }

    fn seals(table: Table) -> bool {
        matches!(table, Table::Jobs | Table::Records)
    }

    fn aad(table: Table, key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(1 + key.len());
        aad.push(table.tag());
        aad.extend_from_slice(key);
        aad
    }

    pub(crate) fn seal(
        &self,
        table: Table,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        if !Self::seals(table) {
            return Ok(value.to_vec());
        }
        let (id, cipher) = &self.keys[0];
        // A random 96-bit nonce per value from the OS; a key seals far fewer values than the 2^32
        // after which random nonces start to risk a repeat.
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: &Self::aad(table, key),
                },
            )
            .map_err(|_| StoreError::Io("encryption failed".into()))?;
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.push(MARKER);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub(crate) fn open(
        &self,
        table: Table,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        if !Self::seals(table) {
            return Ok(value);
        }
        // With encryption on, a value in clear is not data: it was written by something other than
        // this store (or the store was written without encryption and must stay so).
        if value.first() != Some(&MARKER) {
            return Err(StoreError::Corrupt(
                "a value in clear in an encrypted store: it was not written by this store, or the store was created with store.encryption = \"off\" (keep that setting for it)".into(),
            ));
        }
        if value.len() < HEADER {
            return Err(StoreError::Corrupt(
                "sealed value shorter than its header".into(),
            ));
        }
        let id = &value[1..5];
        let Some((_, cipher)) = self.keys.iter().find(|(k, _)| k == id) else {
            return Err(StoreError::Corrupt(format!(
                "a value is sealed under key {} which is not configured (store.encryption_keys)",
                crate::hex::encode(id)
            )));
        };
        cipher
            .decrypt(
                Nonce::from_slice(&value[5..HEADER]),
                Payload {
                    msg: &value[HEADER..],
                    aad: &Self::aad(table, key),
                },
            )
            .map_err(|_| {
                StoreError::Corrupt("a sealed value does not open: tampered or misplaced".into())
            })
    }
}

/// An engine whose `jobs` and `records` values are sealed.
pub(crate) struct SealedEngine {
    pub inner: std::sync::Arc<dyn super::KvEngine>,
    pub keys: std::sync::Arc<Keyring>,
}

impl std::fmt::Debug for SealedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedEngine")
            .field("keys", &self.keys)
            .finish()
    }
}

impl super::KvEngine for SealedEngine {
    fn write(&self, f: &mut super::WriteFn<'_>) -> Result<(), StoreError> {
        let keys = &self.keys;
        self.inner
            .write(&mut |tx| f(&mut SealedWrite { inner: tx, keys }))
    }

    fn read(&self, f: &mut super::ReadFn<'_>) -> Result<(), StoreError> {
        let keys = &self.keys;
        self.inner
            .read(&mut |tx| f(&SealedRead { inner: tx, keys }))
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

impl Keyring {
    fn get_from(
        &self,
        inner: &dyn KvRead,
        table: Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        inner
            .get(table, key)?
            .map(|v| self.open(table, key, v))
            .transpose()
    }

    /// Opens what `scan_in` of `inner` answers.
    fn scan_from(
        &self,
        inner: &dyn KvRead,
        table: Table,
        (from, to): (&[u8], Option<&[u8]>),
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        inner
            .scan_in(table, from, to, limit, order)?
            .into_iter()
            .map(|(k, v)| {
                let v = self.open(table, &k, v)?;
                Ok((k, v))
            })
            .collect()
    }
}

/// Reads through the keyring.
pub(crate) struct SealedRead<'a> {
    pub inner: &'a dyn KvRead,
    pub keys: &'a Keyring,
}

impl KvRead for SealedRead<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.keys.get_from(self.inner, table, key)
    }

    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        self.keys
            .scan_from(self.inner, table, (from, to), limit, order)
    }

    /// Keys are not sealed: the question needs no keyring.
    fn any(&self, table: Table, from: &[u8], to: Option<&[u8]>) -> Result<bool, StoreError> {
        self.inner.any(table, from, to)
    }
}

/// Writes (and reads its own writes) through the keyring.
pub(crate) struct SealedWrite<'a> {
    pub inner: &'a mut dyn KvWrite,
    pub keys: &'a Keyring,
}

impl KvRead for SealedWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.keys.get_from(&*self.inner, table, key)
    }

    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        self.keys
            .scan_from(&*self.inner, table, (from, to), limit, order)
    }

    /// Keys are not sealed: the question needs no keyring.
    fn any(&self, table: Table, from: &[u8], to: Option<&[u8]>) -> Result<bool, StoreError> {
        self.inner.any(table, from, to)
    }
}

impl KvWrite for SealedWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.keys.seal(table, key, value)?;
        self.inner.put(table, key, &sealed)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(table, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_under_its_own_key_and_place_only() {
        let ring = Keyring::new(&[[7u8; 32]]).expect("ring");
        let sealed = ring
            .seal(Table::Jobs, b"id1", b"Nguyen Van An 083173316997")
            .expect("seal");
        assert!(!sealed.windows(5).any(|w| w == b"Nguye"));
        assert_eq!(
            ring.open(Table::Jobs, b"id1", sealed.clone())
                .expect("open"),
            b"Nguyen Van An 083173316997"
        );
        assert!(
            ring.open(Table::Jobs, b"id2", sealed.clone()).is_err(),
            "moved to another key"
        );
        let mut tampered = sealed;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(ring.open(Table::Jobs, b"id1", tampered).is_err());
    }

    #[test]
    fn after_rotation_old_values_open_and_new_ones_use_the_new_key() {
        let old = Keyring::new(&[[1u8; 32]]).expect("ring");
        let sealed_old = old.seal(Table::Records, b"k", b"v1").expect("seal");
        let rotated = Keyring::new(&[[2u8; 32], [1u8; 32]]).expect("ring");
        assert_eq!(
            rotated
                .open(Table::Records, b"k", sealed_old)
                .expect("open"),
            b"v1"
        );
        let sealed_new = rotated.seal(Table::Records, b"k", b"v2").expect("seal");
        assert!(
            old.open(Table::Records, b"k", sealed_new).is_err(),
            "the old ring lacks the new key"
        );
        // Index tables are not sealed; a value in clear where sealed ones belong is an error, not data.
        assert!(
            rotated
                .open(Table::Records, b"k", b"{\"a\":1}".to_vec())
                .is_err()
        );
        assert_eq!(rotated.seal(Table::Keys, b"k", b"id").expect("seal"), b"id");
    }
}
