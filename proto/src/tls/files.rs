//! Certificates and keys from PEM files, checked when loaded: every error names the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    Read { path: PathBuf, why: String },
    NoCertificate { path: PathBuf },
    NoKey { path: PathBuf },
    Parse { path: PathBuf, why: String },
    Expired { path: PathBuf, not_after: i64 },
    NotYetValid { path: PathBuf, not_before: i64 },
    KeyMismatch { cert: PathBuf, key: PathBuf },
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, why } => write!(f, "cannot read {}: {why}", path.display()),
            TlsError::NoCertificate { path } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            TlsError::NoKey { path } => write!(f, "{} holds no PEM private key", path.display()),
            TlsError::Parse { path, why } => write!(f, "{}: {why}", path.display()),
            TlsError::Expired { path, not_after } => write!(
                f,
                "the certificate in {} expired (not valid after {not_after}, seconds since the epoch)",
                path.display()
            ),
            TlsError::NotYetValid { path, not_before } => write!(
                f,
                "the certificate in {} is not valid yet (not before {not_before}, seconds since the epoch)",
                path.display()
            ),
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "the private key in {} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
            TlsError::Config(why) => write!(f, "TLS configuration: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// The certificates of a PEM file, in order (a chain: the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            path: path.to_path_buf(),
            why: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => TlsError::Parse {
            path: path.to_path_buf(),
            why: format!("bad PEM: {e}"),
        },
    })
}

/// Refuses a certificate outside its validity period at `now`.
fn check_validity(der: &CertificateDer<'_>, path: &Path, now: SystemTime) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse {
        path: path.to_path_buf(),
        why: format!("not an X.509 certificate: {e}"),
    })?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let not_before = validity.not_before.timestamp();
    if now > not_after {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_after,
        });
    }
    if now < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            not_before,
        });
    }
    Ok(())
}

/// The certificate chain of `cert` with the key of `key`, checked: both parse, the leaf is
/// within its validity period, and the key belongs to it.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(cert)?;
    if let Some(leaf) = certs.first() {
        check_validity(leaf, cert, SystemTime::now())?;
    }
    let der = load_key(key)?;
    let signing = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Parse {
            path: key.to_path_buf(),
            why: format!("unusable private key: {e}"),
        })?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) => {}
        // A key type whose public half rustls cannot derive: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
    }
    Ok(Arc::new(ck))
}
