//! A certificate and key that follow their files: a watch task re-reads them when either
//! file's modification time changes; a failed reload keeps the previous pair and logs why
//! (naming the file), so a half-written rotation never takes a listener down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::{certified_key, TlsError};

pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Reloading {
    /// Loads the pair now (an error names the file at fault).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Reloading>, TlsError> {
        let (cm, km) = (modified(cert), modified(key));
        let ck = certified_key(cert, key)?;
        Ok(Arc::new(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((ck, cm, km)),
        }))
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().0.clone()
    }

    /// Re-reads the pair if a file changed since the last load: `Ok(true)` when it took the
    /// new one, `Err` (the old pair kept) when the new one does not load.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let (cm, km) = (modified(&self.cert), modified(&self.key));
        {
            let cur = self.current.read();
            if cur.1 == cm && cur.2 == km {
                return Ok(false);
            }
        }
        let ck = certified_key(&self.cert, &self.key)?;
        *self.current.write() = (ck, cm, km);
        Ok(true)
    }

    /// Checks the files every `every` until the returned task is aborted.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                match me.refresh() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(cert = %me.cert.display(), "TLS certificate reloaded");
                    }
                    Ok(false) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(
                            "TLS certificate not reloaded, keeping the previous one: {e}"
                        );
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Reloading {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
