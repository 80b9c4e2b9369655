//! Identity sources: dev CA persistence, PEM files reloaded on change, dev rotation, SVID profile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nsm_identity::{DevCa, PemFileSource, X509Source};

#[tokio::test]
async fn dev_ca_persists_and_pem_source_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::load_or_create(&dir.path().join("ca"), "example.org").unwrap();
    let again = DevCa::load_or_create(&dir.path().join("ca"), "example.org").unwrap();
    assert_eq!(ca.cert_pem(), again.cert_pem());
    assert!(DevCa::load_or_create(&dir.path().join("ca"), "other.org").is_err());

    let svid_dir = dir.path().join("nsc");
    again
        .write_svid_files(&svid_dir, "nsc", Duration::from_secs(3600))
        .unwrap();
    let src = PemFileSource::from_dir(&svid_dir, Duration::from_millis(20)).unwrap();
    assert_eq!(src.current().svid.spiffe_id(), "spiffe://example.org/nsc");
    let mut rx = src.subscribe();
    again
        .write_svid_files(&svid_dir, "nsc2", Duration::from_secs(3600))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("reload within 5 s")
        .unwrap();
    assert_eq!(src.current().svid.spiffe_id(), "spiffe://example.org/nsc2");
}

#[tokio::test]
async fn dev_source_rotates_at_half_life() {
    let ca = std::sync::Arc::new(DevCa::new("example.org").unwrap());
    let src = ca.source("nse", Duration::from_millis(400)).unwrap();
    let first = src.current().svid.leaf_pem().to_string();
    let mut rx = src.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(src.current().svid.leaf_pem(), first);
}

#[test]
fn svids_follow_the_spiffe_profile() {
    let ca = DevCa::new("example.org").unwrap();
    let svid = ca
        .issue("ns/default/pod/nsc-1", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        svid.spiffe_id(),
        "spiffe://example.org/ns/default/pod/nsc-1"
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.chain()[0]).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(DevCa::new("Bad Domain").is_err());
}

#[tokio::test]
async fn no_identity_is_a_clear_error() {
    // The test environment sets none of the identity variables.
    if std::env::var_os("NSM_INSECURE").is_some()
        || std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_some()
        || std::env::var_os("NSM_IDENTITY_DIR").is_some()
    {
        return;
    }
    let err = nsm_identity::transport_from_env().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("SPIFFE_ENDPOINT_SOCKET") && msg.contains("NSM_INSECURE=true"),
        "{msg}"
    );
}
