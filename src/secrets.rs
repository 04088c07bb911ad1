//! Connection secrets, encrypted at rest with AES-256-GCM under a key kept outside the
//! database, in the file named by `idmesh.secret_key_file` (superuser only; an absolute
//! path outside the data directory; created on first use, readable by the server's user
//! only). The database stores, per connector, which key sealed the secret, the nonce and
//! the ciphertext, bound to that connector; the plain secret exists only in the backend's
//! memory while a connector connects.
//!
//! Rotation writes the new key next to the old one (`<file>.idmesh-next`), re-encrypts every
//! secret in the transaction, and when it commits keeps the old key as
//! `<file>.idmesh-previous` and puts the new one in place. A secret names its key, and is
//! read with whichever of the three files holds it: a crash between the commit and the
//! file's move, or another database still using the old key, reads on.

use crate::error::raise;
use crate::{guc, store};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use pgrx::prelude::*;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The form of a sealed secret: magic, the sealing key's id, nonce, ciphertext.
const MAGIC: &[u8; 4] = b"IDM2";
/// What a sealed secret is bound to, with its connector's id after it: a blob copied to
/// another connector does not decrypt there.
const AAD: &[u8] = b"idmesh connector secret v2:";
/// Secrets sealed before keys had ids (nonce and ciphertext only, under the current key).
const AAD_V1: &[u8] = b"idmesh connector secret v1";

type KeyBytes = [u8; 32];

/// Whether this backend's transaction has rotated the key already (its new key is staged,
/// not yet in place): a second rotation would take it for a crashed one and move it early.
static ROTATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn key_path() -> PathBuf {
    let path = match guc::SECRET_KEY_FILE.get().and_then(|p| p.into_string().ok()).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "idmesh.secret_key_file is not set: connection secrets cannot be stored or read",
            "A superuser names a file outside the database for this database: ALTER DATABASE <db> SET \
             idmesh.secret_key_file = '/etc/idmesh/<db>.key' (then reconnect); the key is created there on first use.",
        ),
    };
    if !path.is_absolute() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("idmesh.secret_key_file ({}) must be an absolute path", path.display()),
            "A relative path lands in the data directory, where every backup would carry the key with the secrets.",
        );
    }
    // SAFETY: DataDir is set before any backend runs SQL and never changes.
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    let data_dir = PathBuf::from(&*data_dir.to_string_lossy());
    // Compared as the file system resolves them (`..`, symbolic links); the file itself
    // may not exist yet, its directory must.
    let resolved = |p: &Path| -> PathBuf {
        std::fs::canonicalize(p)
            .or_else(|_| match (p.parent(), p.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)),
                _ => Ok(p.to_path_buf()),
            })
            .unwrap_or_else(|_| p.to_path_buf())
    };
    if resolved(&path).starts_with(resolved(&data_dir)) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("idmesh.secret_key_file ({}) is inside the data directory", path.display()),
            "Keep the key outside it: every backup of the data directory would carry the key with the secrets.",
        );
    }
    path
}

/// `<file><suffix>`: the key file's companions (never the key file itself).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

fn next_path(path: &Path) -> PathBuf {
    beside(path, ".idmesh-next")
}

fn previous_path(path: &Path) -> PathBuf {
    beside(path, ".idmesh-previous")
}

/// The key in `path`: None when there is no such file, an error when it is not a key or
/// others may read it.
fn read_key(path: &Path) -> Option<KeyBytes> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("cannot read the key file {}: {e}", path.display()),
            "",
        ),
    };
    let key: KeyBytes = bytes.try_into().unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("{} is not an idmesh key (32 bytes)", path.display()),
            "",
        )
    });
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode & 0o077 != 0 {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("the key file {} may be read by others (mode {:o})", path.display(), mode & 0o777),
            "Allow the server's user only: chmod 600 on it.",
        );
    }
    Some(key)
}

/// A key's id: the GCM tag of an empty message under it (a fixed nonce; it tells keys apart
/// and says nothing of the key).
fn key_id(k: &KeyBytes) -> [u8; 8] {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k));
    let tag = cipher
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            aes_gcm::aead::Payload {
                msg: b"",
                aad: b"idmesh key id",
            },
        )
        .unwrap_or_default();
    let mut id = [0u8; 8];
    id.copy_from_slice(&tag[..8]);
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a key file whole or not at all (owner-only, written beside it and moved in
/// place, on disk before this returns): a crash never leaves a short key file.
fn write_key(path: &Path, key: &KeyBytes) -> std::io::Result<()> {
    let tmp = beside(path, ".idmesh-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(key)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_directory(path)
}

fn sync_directory(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// A companion key file (`.idmesh-next`, `.idmesh-previous`), or None when it is missing
/// or unusable: a damaged companion never stands in the way of the current key.
fn companion_key(path: &Path) -> Option<KeyBytes> {
    let bytes = std::fs::read(path).ok()?;
    let key: Option<KeyBytes> = bytes.try_into().ok();
    if key.is_none() {
        pgrx::warning!("idmesh: {} is not a key (32 bytes); it is not used", path.display());
    }
    key
}

fn connectors_with_secrets() -> i64 {
    store::one::<i64>("SELECT count(*) FROM mesh.connector WHERE secret IS NOT NULL", &[]).unwrap_or(0)
}

/// The current key, created (owner-only) on first use. A missing file is created only when
/// no secret is stored yet: a new key would read none of them.
fn key() -> KeyBytes {
    let path = key_path();
    if let Some(k) = read_key(&path) {
        return k;
    }
    let stored = connectors_with_secrets();
    if stored > 0 {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!(
                "the key file {} is missing, and {stored} connector secret(s) were stored with a key",
                path.display()
            ),
            "Restore the key file (a new key would read none of them), or name the right one in idmesh.secret_key_file.",
        );
    }
    let fresh: KeyBytes = Aes256Gcm::generate_key(OsRng).into();
    if let Err(e) = write_key(&path, &fresh) {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("cannot create the key file {}: {e}", path.display()),
            "",
        );
    }
    fresh
}

fn aad(connector_id: i32) -> Vec<u8> {
    let mut a = AAD.to_vec();
    a.extend_from_slice(&connector_id.to_be_bytes());
    a
}

/// The sealed form of `plain` for connector `connector_id` under key `k`.
fn seal(k: &KeyBytes, connector_id: i32, plain: &str) -> Vec<u8> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k));
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            aes_gcm::aead::Payload {
                msg: plain.as_bytes(),
                aad: &aad(connector_id),
            },
        )
        .unwrap_or_else(|_| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "secret encryption failed", ""));
    let mut blob = MAGIC.to_vec();
    blob.extend_from_slice(&key_id(k));
    blob.extend_from_slice(&nonce);
    blob.extend(sealed);
    blob
}

/// The sealed form of a connector's secret, under the current key.
pub fn encrypt(connector_id: i32, plain: &str) -> Vec<u8> {
    seal(&key(), connector_id, plain)
}

fn decrypt(k: &KeyBytes, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<String> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k));
    let plain = cipher
        .decrypt(Nonce::from_slice(nonce), aes_gcm::aead::Payload { msg: ciphertext, aad })
        .ok()?;
    String::from_utf8(plain).ok()
}

/// Why a secret could not be read.
enum Unreadable {
    /// No key file at hand has the key it names (its id).
    KeyMissing(String),
    /// The key is there, and the blob does not decrypt with it for this connector.
    NotThisConnector,
}

/// The plain secret of `blob`, stored for `connector_id`.
fn open(blob: &[u8], connector_id: i32) -> Result<String, Unreadable> {
    let path = key_path();
    if blob.len() >= 4 + 8 + 12 + 16 && &blob[..4] == MAGIC {
        let id = &blob[4..12];
        // The current key, the next one of a rotation that committed without moving its
        // file (a crash), the previous one (a rotation in another database using this file).
        let current = key();
        let k = if key_id(&current) == id {
            current
        } else {
            [next_path(&path), previous_path(&path)]
                .iter()
                .filter_map(|p| companion_key(p))
                .find(|k| key_id(k) == id)
                .ok_or_else(|| Unreadable::KeyMissing(hex(id)))?
        };
        return decrypt(&k, &blob[12..24], &blob[24..], &aad(connector_id)).ok_or(Unreadable::NotThisConnector);
    }
    if blob.len() < 12 + 16 {
        return Err(Unreadable::NotThisConnector);
    }
    decrypt(&key(), &blob[..12], &blob[12..], AAD_V1).ok_or_else(|| Unreadable::KeyMissing("(unnamed)".into()))
}

/// The secret of a connector, or None when it has none.
pub fn secret_of(connector_id: i32, connector_name: &str) -> Option<String> {
    let blob: Option<Vec<u8>> = store::one("SELECT secret FROM mesh.connector WHERE id = $1", &[connector_id.into()]);
    let blob = blob?;
    Some(open(&blob, connector_id).unwrap_or_else(|why| unreadable(connector_name, why)))
}

fn unreadable(connector_name: &str, why: Unreadable) -> ! {
    match why {
        Unreadable::KeyMissing(id) => raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!(
                "the secret of connector \"{connector_name}\" cannot be decrypted: it was stored with key {id}, which is \
                 not in idmesh.secret_key_file (key {}) nor beside it",
                hex(&key_id(&key()))
            ),
            "The key file was replaced or is not the one the secret was stored with. Restore it, or store the \
             secret again with mesh.alter_connector(name, secret => ...).",
        ),
        Unreadable::NotThisConnector => raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("the secret of connector \"{connector_name}\" cannot be decrypted: it was not stored for this connector"),
            "Store the secret again with mesh.alter_connector(name, secret => ...).",
        ),
    }
}

/// Re-encrypts every secret under a new key; the new key file takes the old one's place
/// when the transaction commits (the old key stays beside it as `.idmesh-previous`).
pub fn rotate() -> i64 {
    // SAFETY: a plain read of the transaction state.
    if unsafe { pg_sys::GetCurrentTransactionNestLevel() } > 1 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "mesh.rotate_secret_key() cannot run inside a savepoint or an exception block",
            "Its key file is replaced when the whole transaction commits, which a rolled-back savepoint could not \
             undo: call it at the top level of a transaction.",
        );
    }
    if ROTATED.load(std::sync::atomic::Ordering::Relaxed) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "the secret key was rotated in this transaction already",
            "Commit it, then rotate again.",
        );
    }
    let path = key_path();
    let staged = next_path(&path);
    key(); // the current key exists (created if no secret is stored yet): it becomes the previous one
    // A rotation that committed but did not move its file (a crash) is finished first.
    if let Some(pending) = companion_key(&staged) {
        let used = store::one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM mesh.connector WHERE substr(secret, 5, 8) = $1)",
            &[key_id(&pending).to_vec().into()],
        );
        if used == Some(true) {
            if let Err(e) = promote(&path, &staged) {
                raise(
                    PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
                    format!("an earlier rotation's key {} cannot be moved into place: {e}", staged.display()),
                    "Secrets are read with it meanwhile; fix the directory's permissions or space and rotate again.",
                );
            }
            return rotate();
        }
    }
    let _ = std::fs::remove_file(&staged);
    let new: KeyBytes = Aes256Gcm::generate_key(OsRng).into();
    let rows: Vec<(i32, String, Vec<u8>)> = store::json(
        "SELECT coalesce(jsonb_agg(jsonb_build_array(id, name, encode(secret, 'hex'))), '[]') \
         FROM mesh.connector WHERE secret IS NOT NULL",
        &[],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
    .into_iter()
    .map(|r| {
        (
            r[0].as_i64().unwrap_or_default() as i32,
            r[1].as_str().unwrap_or_default().to_string(),
            hex_decode(r[2].as_str().unwrap_or_default()),
        )
    })
    .collect();
    let mut n = 0;
    for (id, name, blob) in rows {
        let plain = open(&blob, id).unwrap_or_else(|why| unreadable(&name, why));
        store::exec(
            "UPDATE mesh.connector SET secret = $2 WHERE id = $1",
            &[id.into(), seal(&new, id, &plain).into()],
        );
        n += 1;
    }
    if let Err(e) = write_key(&staged, &new) {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("cannot write the new key {}: {e}", staged.display()),
            "",
        );
    }
    ROTATED.store(true, std::sync::atomic::Ordering::Relaxed);
    let (commit_path, commit_staged) = (path.clone(), staged.clone());
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        ROTATED.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = promote(&commit_path, &commit_staged) {
            pgrx::warning!(
                "idmesh: the new secret key could not be moved into place ({e}); secrets are read from {} until \
                 the next rotation finishes it",
                commit_staged.display()
            );
        }
    });
    // A prepared transaction would keep the new key's fate open past this session's
    // callbacks: refused.
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PrePrepare, || {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a transaction that rotated the secret key cannot be prepared (PREPARE TRANSACTION)",
            "Commit it directly.",
        )
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        ROTATED.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&staged);
    });
    n
}

/// Puts the staged key in place: the current key becomes `.idmesh-previous` (written whole
/// before the move), then the staged file takes the key file's name. Each step leaves every
/// key a secret may name in one of the three files.
fn promote(path: &Path, staged: &Path) -> std::io::Result<()> {
    let current: KeyBytes = std::fs::read(path)?
        .try_into()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not a key"))?;
    write_key(&previous_path(path), &current)?;
    std::fs::rename(staged, path)?;
    sync_directory(path)
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}
