//! `scripts/deploy.sh` with security in the inventory (dry run over ssh): every node gets its
//! certificate, key and the CA, the cluster and admin secrets, copied next to its config and
//! named in it; a node without a certificate while TLS is on is refused before anything runs.

use std::path::Path;
use std::process::Command;

use sluice_integration_tests::{bin_dir, repo_root};

fn deploy_dry(inventory: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/deploy.sh"))
        .arg("--inventory")
        .arg(inventory)
        .args(args)
        .env("SLUICE_BIN_DIR", bin_dir())
        .env("SLUICE_DEPLOY_DRY_RUN", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_secured_inventory_installs_certificates_and_secrets_on_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    let f = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, format!("{name}\n")).unwrap();
        p.display().to_string()
    };
    let (ca, cluster, admin) = (f("ca.crt"), f("cluster.secret"), f("admin.secret"));
    let (c1, k1, c2, k2) = (f("ns.crt"), f("ns.key"), f("b.crt"), f("b.key"));
    let inventory = tmp.path().join("prod.inventory");
    let base = format!(
        "transport ssh\nssh_user deploy\nremote_dir /opt/sluice\ncluster_name prod\n\
         tls_ca {ca}\ncluster_secret_file {cluster}\nauth_admin admin\nauth_admin_secret_file {admin}\n\
         node ns-1 nameserver host1 10.0.0.1:9876 cert={c1} key={k1}\n"
    );
    std::fs::write(
        &inventory,
        format!(
            "{base}node broker-a-1 broker host2 10.0.0.2:10911 group=broker-a cert={c2} key={k2}\n"
        ),
    )
    .unwrap();
    let (ok, out) = deploy_dry(&inventory, &["install"]);
    assert!(ok, "{out}");
    for needle in [
        "'deploy@host2:/opt/sluice/nodes/broker-a-1/tls/node.key.tmp'",
        "'deploy@host2:/opt/sluice/nodes/broker-a-1/tls/ca.crt.tmp'",
        "'deploy@host2:/opt/sluice/nodes/broker-a-1/secrets/cluster.secret.tmp'",
        "'deploy@host1:/opt/sluice/nodes/ns-1/secrets/admin.secret.tmp'",
    ] {
        assert!(out.contains(needle), "missing {needle} in:\n{out}");
    }
    let stage = tmp.path().join(".deploy/prod");
    let broker = std::fs::read_to_string(stage.join("broker-a-1/config.toml")).unwrap();
    for line in [
        "tls_cert_file = \"/opt/sluice/nodes/broker-a-1/tls/node.crt\"",
        "tls_ca_file = \"/opt/sluice/nodes/broker-a-1/tls/ca.crt\"",
        "cluster_secret_file = \"/opt/sluice/nodes/broker-a-1/secrets/cluster.secret\"",
        "auth_enabled = true",
        "auth_admin = \"admin\"",
    ] {
        assert!(broker.contains(line), "missing {line} in:\n{broker}");
    }
    let ns = std::fs::read_to_string(stage.join("ns-1/config.toml")).unwrap();
    for line in [
        "tls_key_file = \"/opt/sluice/nodes/ns-1/tls/node.key\"",
        "admin_access_key = \"admin\"",
        "cluster_secret_file = \"/opt/sluice/nodes/ns-1/secrets/cluster.secret\"",
    ] {
        assert!(ns.contains(line), "missing {line} in:\n{ns}");
    }
    // The broker's config parses as a broker's (no unknown keys).
    assert!(!broker.contains("admin_access_key"), "{broker}");
    // Its allocator stays off huge pages whatever the host's THP mode.
    let unit = std::fs::read_to_string(stage.join("broker-a-1/sluice-broker-a-1.service")).unwrap();
    assert!(
        unit.contains("\nEnvironment=MIMALLOC_ALLOW_THP=0\n"),
        "{unit}"
    );

    // TLS on, a node without its certificate: refused, nothing copied.
    std::fs::write(
        &inventory,
        format!("{base}node broker-a-1 broker host2 10.0.0.2:10911 group=broker-a\n"),
    )
    .unwrap();
    let (ok, out) = deploy_dry(&inventory, &["install"]);
    assert!(!ok, "{out}");
    assert!(out.contains("broker-a-1 needs cert=FILE key=FILE"), "{out}");
    assert!(!out.contains("scp"), "{out}");
}
