//! A throwaway certificate authority for local clusters and tests (`rcgen`, no `openssl`).

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::TlsError;

fn gen_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(format!("certificate generation: {e}"))
}

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(gen_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(gen_error)?;
        Ok(Ca { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), for servers and clients alike;
    /// `not_after` (a date) overrides the default validity, to test expiry.
    pub fn issue(
        &self,
        names: &[String],
        not_after: Option<(i32, u8, u8)>,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(gen_error)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen_error)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `contents` to `path`; a private key readable by its owner only.
pub fn write_pem(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let io = |e: std::io::Error| TlsError::Read {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(io)?;
    // An existing file keeps its mode through `open`: tighten it before the key goes in.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(io)
}

/// A throwaway CA and a certificate for 127.0.0.1 written under `dir`, and a server and a
/// client configuration of them offering `alpn` (for tests of TLS connections).
pub fn local_configs(
    dir: &Path,
    alpn: &[u8],
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    let ca = Ca::new("local test CA")?;
    let node = ca.issue(&["127.0.0.1".to_string()], None)?;
    let (ca_file, cert, key) = (dir.join("ca.crt"), dir.join("n.crt"), dir.join("n.key"));
    write_pem(&ca_file, &ca.cert_pem(), false)?;
    write_pem(&cert, &node.cert_pem, false)?;
    write_pem(&key, &node.key_pem, true)?;
    let certs = super::Reloading::load(&cert, &key)?;
    let server = super::server_config(certs, None, false, &[alpn])?;
    let client = super::client_config(&ca_file, None, &[alpn])?;
    Ok((server, client))
}
