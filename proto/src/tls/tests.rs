use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::gen::{write_pem, Ca};
use super::*;

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        Files {
            root: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `name.crt` and `name.key` issued by `ca` for `host`.
    fn issue(&self, ca: &Ca, name: &str, host: &str, not_after: Option<(i32, u8, u8)>) {
        let i = ca.issue(&[host.to_string()], not_after).unwrap();
        write_pem(&self.path(&format!("{name}.crt")), &i.cert_pem, false).unwrap();
        write_pem(&self.path(&format!("{name}.key")), &i.key_pem, true).unwrap();
    }

    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        )
    }
}

/// Runs a handshake between the two in memory; the error of the side that failed.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), String> {
    for _ in 0..20 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server
            .read_tls(&mut buf.as_slice())
            .map_err(|e| e.to_string())?;
        server
            .process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client
            .read_tls(&mut buf.as_slice())
            .map_err(|e| e.to_string())?;
        client
            .process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
    }
    Err("the handshake did not finish".into())
}

fn connect(
    ca: &Path,
    server: Arc<Reloading>,
    client: Option<Arc<Reloading>>,
    require_client: bool,
) -> (Result<(), String>, ServerConnection) {
    let scfg = server_config(server, Some(ca), require_client, &[ALPN_H2]).unwrap();
    let ccfg = client_config(ca, client, &[ALPN_H2]).unwrap();
    let mut s = ServerConnection::new(Arc::new(scfg)).unwrap();
    let name = ServerName::try_from("broker-a.test").unwrap();
    let mut c = ClientConnection::new(Arc::new(ccfg), name).unwrap();
    let r = handshake(&mut c, &mut s);
    (r, s)
}

#[test]
fn mutual_tls_with_a_throwaway_ca() {
    let f = Files::new();
    let ca = Ca::new("sluice test CA").unwrap();
    write_pem(&f.path("ca.crt"), &ca.cert_pem(), false).unwrap();
    f.issue(&ca, "server", "broker-a.test", None);
    f.issue(&ca, "peer", "broker-b.test", None);
    let (sc, sk) = f.pair("server");
    let (pc, pk) = f.pair("peer");
    let server = Reloading::load(&sc, &sk).unwrap();
    let peer = Reloading::load(&pc, &pk).unwrap();
    let (r, s) = connect(&f.path("ca.crt"), server.clone(), Some(peer), true);
    r.unwrap();
    assert_eq!(s.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(s.peer_certificates().map(<[_]>::len), Some(1));
    // Without a client certificate, a server that requires one refuses.
    let (r, _) = connect(&f.path("ca.crt"), server.clone(), None, true);
    assert!(r.is_err());
    // One that does not require one lets it through.
    let (r, _) = connect(&f.path("ca.crt"), server, None, false);
    r.unwrap();
    // A certificate from another CA is refused.
    let other = Ca::new("stranger").unwrap();
    f.issue(&other, "stranger", "broker-x.test", None);
    let (xc, xk) = f.pair("stranger");
    let stranger = Reloading::load(&xc, &xk).unwrap();
    let server = Reloading::load(&sc, &sk).unwrap();
    let (r, _) = connect(&f.path("ca.crt"), server, Some(stranger), true);
    let e = r.unwrap_err();
    assert!(e.contains("server"), "{e}");
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let f = Files::new();
    let ca = Ca::new("sluice test CA").unwrap();
    f.issue(&ca, "a", "a.test", None);
    f.issue(&ca, "b", "b.test", None);
    let (ac, ak) = f.pair("a");
    let (_, bk) = f.pair("b");
    let shown = |e: TlsError| e.to_string();
    let missing = f.path("missing.crt");
    let e = shown(Reloading::load(&missing, &ak).unwrap_err());
    assert!(e.contains("missing.crt"), "{e}");
    let e = shown(certified_key(&ac, &bk).unwrap_err());
    assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
    std::fs::write(f.path("junk.crt"), "not a certificate\n").unwrap();
    let e = shown(certified_key(&f.path("junk.crt"), &ak).unwrap_err());
    assert!(
        e.contains("junk.crt") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = shown(certified_key(&ac, &ac).unwrap_err());
    assert!(e.contains("a.crt"), "{e}");
    f.issue(&ca, "old", "old.test", Some((2020, 1, 1)));
    let (oc, ok) = f.pair("old");
    let e = certified_key(&oc, &ok).unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");
    assert!(shown(e).contains("old.crt"));
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart_and_a_bad_one_is_not() {
    let f = Files::new();
    let ca = Ca::new("sluice test CA").unwrap();
    write_pem(&f.path("ca.crt"), &ca.cert_pem(), false).unwrap();
    f.issue(&ca, "server", "broker-a.test", None);
    let (sc, sk) = f.pair("server");
    let server = Reloading::load(&sc, &sk).unwrap();
    let first = server.current().cert.clone();
    assert!(!server.refresh().unwrap(), "nothing changed yet");
    // Rotate: a new pair in place (mtimes move forward).
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.issue(&ca, "server", "broker-a.test", None);
    let bumped = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    for p in [&sc, &sk] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(bumped)
            .unwrap();
    }
    assert!(server.refresh().unwrap());
    let second = server.current().cert.clone();
    assert_ne!(first, second);
    let (r, s) = connect(&f.path("ca.crt"), server.clone(), None, false);
    r.unwrap();
    drop(s);
    // A half-written rotation (the key of another pair) keeps the working one.
    f.issue(&ca, "other", "x.test", None);
    std::fs::copy(f.path("other.key"), &sk).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&sk)
        .unwrap()
        .set_modified(bumped + std::time::Duration::from_secs(2))
        .unwrap();
    assert!(matches!(
        server.refresh(),
        Err(TlsError::KeyMismatch { .. })
    ));
    assert_eq!(server.current().cert, second);
    let (r, _) = connect(&f.path("ca.crt"), server, None, false);
    r.unwrap();
}
