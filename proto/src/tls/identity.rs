//! Who a verified peer certificate names: its subject alternative names (DNS names and IP
//! addresses), to tell replicas apart by certificate (a replica takes Raft traffic only from
//! a certificate issued for its configured peer's host).

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The names of a peer's verified certificate (empty when it showed none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerNames(Option<Arc<[String]>>);

impl PeerNames {
    /// The names of the leaf of `chain` (as rustls hands it over: leaf first, verified).
    pub fn of_chain(chain: Option<&[CertificateDer<'_>]>) -> PeerNames {
        match chain.and_then(|c| c.first()) {
            Some(leaf) => PeerNames(Some(names(leaf).into())),
            None => PeerNames(None),
        }
    }

    /// A certificate's names as given (tests and tools).
    pub fn from_names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> PeerNames {
        PeerNames(Some(names.into_iter().map(Into::into).collect()))
    }

    /// Whether the peer showed a certificate at all.
    pub fn shown(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the certificate was issued for `host` (a DNS name, case-insensitive, or an IP
    /// address in any of its spellings; a bracketed IPv6 literal too).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        self.0.iter().flat_map(|n| n.iter()).any(|n| match ip {
            Some(ip) => n.parse::<IpAddr>().is_ok_and(|m| m == ip),
            None => n.eq_ignore_ascii_case(host),
        })
    }

    pub fn names(&self) -> &[String] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// The DNS and IP subject alternative names of `der` (none when it does not parse: a
/// certificate rustls verified always does).
fn names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::gen::Ca;

    #[test]
    fn names_come_from_the_leaf_and_match_hosts_by_their_kind() {
        let ca = Ca::new("identity CA").unwrap();
        let hosts = [
            "10.0.0.7".to_string(),
            "Broker-A.example".to_string(),
            "::1".to_string(),
        ];
        let issued = ca.issue(&hosts, None).unwrap();
        let der = rustls_pemfile_first(&issued.cert_pem);
        let names = PeerNames::of_chain(Some(std::slice::from_ref(&der)));
        assert!(names.shown());
        assert!(names.covers("10.0.0.7"));
        assert!(names.covers("broker-a.example"), "{names:?}");
        assert!(names.covers("[::1]") && names.covers("0:0:0:0:0:0:0:1"));
        assert!(!names.covers("10.0.0.8") && !names.covers("broker-b.example"));
        assert!(!names.covers("10.0.0.7.evil") && !names.covers(""));
        let none = PeerNames::of_chain(None);
        assert!(!none.shown() && !none.covers("10.0.0.7"));
        // Garbage is no name at all, never a panic.
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01]);
        assert!(PeerNames::of_chain(Some(&[junk])).names().is_empty());
    }

    fn rustls_pemfile_first(pem: &str) -> CertificateDer<'static> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.pem");
        std::fs::write(&p, pem).unwrap();
        crate::tls::load_certs(&p).unwrap().remove(0)
    }
}
