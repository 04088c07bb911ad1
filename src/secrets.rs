//! Connection secrets, encrypted at rest with AES-256-GCM under a key kept outside the
//! database, in the file named by `idmesh.secret_key_file` (superuser only; created on
//! first use, readable by the server's user only). The database stores nonce + ciphertext;
//! the plain secret exists only in the backend's memory while a connector connects.

use crate::error::raise;
use crate::{guc, store};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use pgrx::prelude::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Binds ciphertexts to this use, so a blob cannot be replayed as something else.
const AAD: &[u8] = b"idmesh connector secret v1";

fn key_path() -> PathBuf {
    match guc::SECRET_KEY_FILE.get().and_then(|p| p.into_string().ok()).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "idmesh.secret_key_file is not set: connection secrets cannot be stored or read",
            "A superuser sets it to a path outside the database (ALTER SYSTEM SET idmesh.secret_key_file = \
             '/etc/idmesh/secret.key'; SELECT pg_reload_conf()); the key is created there on first use.",
        ),
    }
}

fn read_key(path: &PathBuf) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    bytes.try_into().ok()
}

/// The key, created (owner-only) when there is none yet.
fn key() -> [u8; 32] {
    let path = key_path();
    if let Some(k) = read_key(&path) {
        return k;
    }
    if path.exists() {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!(
                "idmesh.secret_key_file ({}) is not an idmesh key (32 bytes)",
                path.display()
            ),
            "",
        );
    }
    let fresh: [u8; 32] = Aes256Gcm::generate_key(OsRng).into();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&fresh).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!(
                "cannot create the key file idmesh.secret_key_file ({}): {e}",
                path.display()
            ),
            "",
        );
    }
    fresh
}

/// nonce || ciphertext of `plain` under `k`.
fn seal(k: &[u8; 32], plain: &str) -> Vec<u8> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k));
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            aes_gcm::aead::Payload {
                msg: plain.as_bytes(),
                aad: AAD,
            },
        )
        .unwrap_or_else(|_| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "secret encryption failed",
                "",
            )
        });
    let mut blob = nonce.to_vec();
    blob.extend(sealed);
    blob
}

pub fn encrypt(plain: &str) -> Vec<u8> {
    seal(&key(), plain)
}

fn open(blob: &[u8], k: &[u8; 32]) -> Option<String> {
    if blob.len() < 12 + 16 {
        return None;
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k));
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&blob[..12]),
            aes_gcm::aead::Payload {
                msg: &blob[12..],
                aad: AAD,
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

/// The secret of a connector, or None when it has none.
pub fn secret_of(connector_id: i32, connector_name: &str) -> Option<String> {
    let blob: Option<Vec<u8>> = store::one(
        "SELECT secret FROM mesh.connector WHERE id = $1",
        &[connector_id.into()],
    );
    let blob = blob?;
    Some(open(&blob, &key()).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("the secret of connector \"{connector_name}\" cannot be decrypted with the key in idmesh.secret_key_file"),
            "The key file was replaced or is not the one the secret was stored with. Restore it, or store the \
             secret again with mesh.alter_connector(name, secret => ...).",
        )
    }))
}

/// Re-encrypts every secret under a new key; the new key file takes the old one's place
/// when the transaction commits (the old one is kept next to it with `.old`).
pub fn rotate() -> i64 {
    let path = key_path();
    let old = key();
    let new: [u8; 32] = Aes256Gcm::generate_key(OsRng).into();
    let rows = store::json(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'name', name, 'secret', encode(secret, 'hex'))), '[]') \
         FROM mesh.connector WHERE secret IS NOT NULL",
        &[],
    );
    let mut n = 0;
    for r in rows.as_array().cloned().unwrap_or_default() {
        let id = r["id"].as_i64().unwrap_or_default() as i32;
        let name = r["name"].as_str().unwrap_or_default().to_string();
        let blob = hex_decode(r["secret"].as_str().unwrap_or_default());
        let plain = open(&blob, &old).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
                format!("the secret of connector \"{name}\" cannot be decrypted with the current key; nothing was rotated"),
                "",
            )
        });
        let sealed = seal(&new, &plain);
        store::exec(
            "UPDATE mesh.connector SET secret = $2 WHERE id = $1",
            &[id.into(), sealed.into()],
        );
        n += 1;
    }
    let staged = path.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut f| f.write_all(&new).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("cannot write the new key: {e}"),
            "",
        );
    }
    let (commit_path, commit_staged) = (path.clone(), staged.clone());
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        let _ = std::fs::copy(&commit_path, commit_path.with_extension("old"));
        let _ = std::fs::rename(&commit_staged, &commit_path);
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        let _ = std::fs::remove_file(&staged);
    });
    n
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}
