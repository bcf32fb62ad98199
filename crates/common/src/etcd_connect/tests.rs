//! The flag rules of [`EtcdConnectArgs`], with certificates made here (no etcd needed).

use super::*;
use crate::testing::certs::Pki;

fn endpoints(list: &[&str]) -> Vec<String> {
    list.iter().map(|e| e.to_string()).collect()
}

fn message(args: &EtcdConnectArgs, list: &[&str], env: Option<&str>) -> String {
    args.connect_options_with(&endpoints(list), env.map(str::to_string))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "accepted".into())
}

fn tls_args(pki: &Pki) -> EtcdConnectArgs {
    let client = pki.issue("client", &["client.local"]);
    EtcdConnectArgs {
        etcd_ca: Some(pki.ca().into()),
        etcd_cert: Some(client.cert),
        etcd_key: Some(client.key),
        ..EtcdConnectArgs::default()
    }
}

#[test]
fn no_flags_mean_plain_http_without_a_user() {
    let args = EtcdConnectArgs::default();
    assert_eq!(
        message(&args, &["http://127.0.0.1:2379", "etcd-1:2379"], None),
        "accepted"
    );
    assert!(args.to_flags().is_empty());
}

#[test]
fn tls_with_an_http_endpoint_asks_for_https() {
    let pki = Pki::new("etcd CA");
    let e = message(
        &tls_args(&pki),
        &["https://a:2379", "http://etcd-1:2379"],
        None,
    );
    assert!(
        e.contains("http://etcd-1:2379") && e.contains("https://etcd-1:2379"),
        "{e}"
    );
    // An endpoint without a scheme follows --etcd-ca.
    assert_eq!(message(&tls_args(&pki), &["etcd-1:2379"], None), "accepted");
}

#[test]
fn https_without_a_ca_asks_for_etcd_ca() {
    let e = message(&EtcdConnectArgs::default(), &["https://etcd-0:2379"], None);
    assert!(
        e.contains("--etcd-ca") && e.contains("https://etcd-0:2379"),
        "{e}"
    );
}

#[test]
fn a_client_certificate_needs_its_key_and_the_ca() {
    let pki = Pki::new("etcd CA");
    let https = ["https://etcd-0:2379"];
    let no_key = EtcdConnectArgs {
        etcd_key: None,
        ..tls_args(&pki)
    };
    assert!(message(&no_key, &https, None).contains("--etcd-key is missing"));
    let no_cert = EtcdConnectArgs {
        etcd_cert: None,
        ..tls_args(&pki)
    };
    assert!(message(&no_cert, &https, None).contains("--etcd-cert is missing"));
    let no_ca = EtcdConnectArgs {
        etcd_ca: None,
        ..tls_args(&pki)
    };
    assert!(message(&no_ca, &["etcd-0:2379"], None).contains("--etcd-cert needs --etcd-ca"));
}

#[test]
fn bad_pem_files_are_named() {
    let pki = Pki::new("etcd CA");
    let args = tls_args(&pki);
    let swapped = EtcdConnectArgs {
        etcd_ca: args.etcd_key.clone(),
        ..args.clone()
    };
    let e = message(&swapped, &["https://etcd-0:2379"], None);
    assert!(
        e.contains("no certificate in PEM file") && e.contains("client.key"),
        "{e}"
    );
    let other = pki.issue("other", &["other.local"]);
    let mismatched = EtcdConnectArgs {
        etcd_key: Some(other.key),
        ..args
    };
    let e = message(&mismatched, &["https://etcd-0:2379"], None);
    assert!(e.contains("does not match certificate"), "{e}");
    let missing = EtcdConnectArgs {
        etcd_ca: Some(pki.dir().join("nope.pem")),
        ..EtcdConnectArgs::default()
    };
    let e = message(&missing, &["https://etcd-0:2379"], None);
    assert!(e.contains("cannot read") && e.contains("nope.pem"), "{e}");
}

#[test]
fn a_user_needs_a_password_from_the_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let user = EtcdConnectArgs {
        etcd_user: Some("worker".into()),
        ..EtcdConnectArgs::default()
    };
    let plain = ["http://127.0.0.1:2379"];
    let e = message(&user, &plain, None);
    assert!(
        e.contains("--etcd-password-file") && e.contains("CHORUS_ETCD_PASSWORD"),
        "{e}"
    );
    assert_eq!(
        message(&user, &plain, Some("")),
        e,
        "an empty variable is no password"
    );
    assert_eq!(message(&user, &plain, Some("s3cret")), "accepted");

    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let with_file = EtcdConnectArgs {
        etcd_password_file: Some(file.clone()),
        ..user.clone()
    };
    let (name, password) = with_file.credentials(None).unwrap().unwrap();
    assert_eq!((name.as_str(), password.as_str()), ("worker", "s3cret"));
    // The file wins over the environment.
    let (_, password) = with_file
        .credentials(Some("other".into()))
        .unwrap()
        .unwrap();
    assert_eq!(password, "s3cret");

    std::fs::write(&file, "\n").unwrap();
    assert!(message(&with_file, &plain, None).contains("is empty"));
    let missing = EtcdConnectArgs {
        etcd_password_file: Some(dir.path().join("absent")),
        ..user
    };
    let e = message(&missing, &plain, None);
    assert!(
        e.contains("cannot read --etcd-password-file") && e.contains("absent"),
        "{e}"
    );
    let no_user = EtcdConnectArgs {
        etcd_password_file: Some(file),
        ..EtcdConnectArgs::default()
    };
    assert!(message(&no_user, &plain, None).contains("without --etcd-user"));
}

#[test]
fn only_crlf_or_lf_is_trimmed_from_a_password_file() {
    assert_eq!(strip_newline("pw\n"), "pw");
    assert_eq!(strip_newline("pw\r\n"), "pw");
    assert_eq!(strip_newline(" pw \n\n"), " pw \n");
}

#[test]
fn flags_for_a_child_never_carry_the_password() {
    let pki = Pki::new("etcd CA");
    let args = EtcdConnectArgs {
        etcd_user: Some("root".into()),
        etcd_password_file: Some("/run/secrets/etcd".into()),
        ..tls_args(&pki)
    };
    let flags = args.to_flags();
    assert_eq!(flags.len(), 5, "{flags:?}");
    assert!(flags.contains(&"--etcd-user=root".to_string()));
    assert!(flags.contains(&"--etcd-password-file=/run/secrets/etcd".to_string()));
}

#[test]
fn refusals_are_told_apart_from_an_unreachable_etcd() {
    let refused = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
        "etcdserver: authentication failed, invalid user ID or password",
    ));
    assert!(is_refused_credentials(&refused));
    assert_eq!(
        refusal_message(&refused),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let down = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("tcp connect error"));
    assert!(!is_refused_credentials(&down));
}
