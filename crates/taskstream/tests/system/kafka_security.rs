//! SASL/SCRAM over TLS, as a Strimzi cluster with `scram-sha-512` users
//! asks for: the real binary authenticates against a stand-in broker
//! (`tests/interop/sasl_broker.py`) that verifies the SCRAM proof behind a
//! TLS certificate signed by a CA the component is given, and the password
//! never reaches the logs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::binary::ChildGuard;
use crate::interop::{python, skip_or_fail};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sasl_broker.py")
}

/// A self-signed certificate for 127.0.0.1 (its own CA), made by openssl.
fn certificate(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("broker.pem"), dir.join("broker.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    made.then_some((cert, key))
}

/// Starts the stand-in broker; returns it, its address and its report lines.
fn broker(
    python: &Path,
    password: &str,
    cert: &Path,
    key: &Path,
) -> (ChildGuard, String, mpsc::Receiver<Value>) {
    let mut child = ChildGuard(
        Command::new(python)
            .arg(script())
            .args(["taskstream-relay", password, "--tls"])
            .args([cert, key])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let address = first.strip_prefix("listening ").unwrap().to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    (child, address, rx)
}

/// Runs a relay against `bootstrap` with SASL_SSL as `taskstream-relay`
/// and `password`; returns it and the path of its (debug-level) log.
fn relay(bootstrap: &str, password: &str, ca: &Path, dir: &Path) -> (ChildGuard, PathBuf) {
    let log = dir.join(format!("relay-{}.log", uuid::Uuid::new_v4()));
    let child = ChildGuard(
        Command::new(BIN)
            .args([
                "relay",
                "--event-format",
                "json",
                "--kafka-bootstrap",
                bootstrap,
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
            .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
            .env("KAFKA_SASL_USERNAME", "taskstream-relay")
            .env("KAFKA_SASL_PASSWORD", password)
            .env("KAFKA_SSL_CA_LOCATION", ca)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    (child, log)
}

#[test]
fn components_authenticate_with_scram_over_tls_and_never_log_the_password() {
    let Some(python) = python() else {
        skip_or_fail("the SASL/SCRAM over TLS test (needs the .venv's python)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = certificate(dir.path()) else {
        skip_or_fail("the SASL/SCRAM over TLS test (needs the openssl command)");
        return;
    };
    let password = "correct horse battery staple";
    let (_broker, address, reports) = broker(&python, password, &cert, &key);

    // The right password: the broker checks the SCRAM proof and accepts it.
    let (mut good, log) = relay(&address, password, &cert, dir.path());
    let report = reports
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay tried to authenticate");
    assert_eq!(report["user"], "taskstream-relay");
    assert_eq!(report["mechanism"], "SCRAM-SHA-512");
    assert_eq!(report["tls"], true, "the credentials travelled over TLS");
    assert_eq!(report["authenticated"], true, "{report}");
    good.0.kill().unwrap();
    good.0.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.is_empty(), "the relay logs at debug level");
    assert!(!logged.contains(password), "the password reached the log");
    while reports.try_recv().is_ok() {}

    // A wrong password: refused, and the refusal is in the relay's log.
    let (mut bad, log) = relay(&address, "wrong password", &cert, dir.path());
    let report = reports
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay tried to authenticate");
    assert_eq!(report["authenticated"], false, "{report}");
    std::thread::sleep(Duration::from_millis(500));
    bad.0.kill().unwrap();
    bad.0.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("Authentication failed") || logged.contains("SASL authentication error"),
        "the relay's log names the failure:\n{logged}"
    );
    assert!(!logged.contains("wrong password"));
}

#[test]
fn inconsistent_security_settings_fail_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
            "needs a user name and a password",
        ),
        (
            &[
                ("KAFKA_SASL_USERNAME", "taskstream-relay"),
                ("KAFKA_SASL_PASSWORD", "x"),
            ],
            "--kafka-security-protocol is plaintext",
        ),
        (
            &[
                ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.crt"),
            ],
            "cannot read the Kafka CA file /nonexistent/ca.crt",
        ),
        (
            &[("KAFKA_SECURITY_PROTOCOL", "kerberos")],
            "invalid value 'kerberos'",
        ),
    ];
    for (env, expected) in cases {
        let out = Command::new(BIN)
            .args([
                "relay",
                "--event-format",
                "json",
                "--kafka-bootstrap",
                "127.0.0.1:9",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} was accepted");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
