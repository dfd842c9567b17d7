//! The Graph client over HTTPS with a private CA (as the simulator serves): trusted only
//! when the CA is passed with `--ca-file`.

use std::net::SocketAddr;

use axum::routing::{get, post};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use redeliver::graph::{GraphClient, GraphSettings, Secret};

struct Tls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn generate() -> Tls {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Tls {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

async fn serve(tls: &Tls) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = axum::Router::new()
        .route(
            "/t1/oauth2/v2.0/token",
            post(|| async {
                axum::Json(serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "tok"}))
            }),
        )
        .route(
            "/v1.0/groups/g1/members",
            get(|| async { axum::Json(serde_json::json!({"value": [{"id": "u1"}]})) }),
        );
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(
        tls.cert_pem.clone().into_bytes(),
        tls.key_pem.clone().into_bytes(),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = axum_server::from_tcp_rustls(listener, config).unwrap();
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    addr
}

fn args(addr: SocketAddr) -> GraphSettings {
    GraphSettings {
        tenant_id: Some("t1".into()),
        client_id: Some("c1".into()),
        client_secret: Some(Secret::new("s")),
        graph_url: format!("https://localhost:{}", addr.port()),
        authority_host: format!("https://127.0.0.1:{}", addr.port()),
        ..GraphSettings::with_defaults()
    }
}

#[tokio::test]
async fn private_ca_is_trusted_only_via_ca_file() {
    let tls = generate();
    let addr = serve(&tls).await;

    let mut untrusted = args(addr);
    untrusted.max_retries = 0;
    let c = GraphClient::new(untrusted.validate().unwrap()).unwrap();
    let e = c.check_token().await.unwrap_err();
    assert_eq!(e.kind(), "transport", "{e}");

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let mut trusted = args(addr);
    trusted.ca_file = Some(ca);
    let c = GraphClient::new(trusted.validate().unwrap()).unwrap();
    assert_eq!(c.list_group_members("g1").await.unwrap(), vec!["u1"]);
}

#[tokio::test]
async fn ca_file_without_certificates_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let mut a = args("127.0.0.1:1".parse().unwrap());
    a.ca_file = Some(ca);
    let e = GraphClient::new(a.validate().unwrap()).err().unwrap();
    assert_eq!(e.kind(), "config");
    assert!(e.to_string().contains("ca.pem"), "{e}");
}
