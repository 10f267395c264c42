//! The Strimzi manifests in `deploy/strimzi/`: topics generated from the
//! declarations in code, everything valid against Strimzi's CRDs.

use std::path::PathBuf;
use std::process::Command;

use crate::interop::{python, skip_or_fail};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn committed_topic_manifests_equal_what_the_code_declares() {
    for (file, replicas) in [("topics-dev.yaml", "1"), ("topics-prod.yaml", "3")] {
        let out = Command::new(BIN)
            .args([
                "topics",
                "render",
                "--format",
                "strimzi",
                "--replication-factor",
                replicas,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let committed = std::fs::read_to_string(repo().join("deploy/strimzi").join(file)).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            committed,
            "deploy/strimzi/{file} is stale: regenerate it with `taskstream topics render --replication-factor {replicas}`"
        );
    }
}

/// Strimzi's CRDs: `TASKSTREAM_STRIMZI_CRDS`, else the copies in `deploy/strimzi/crds/`.
fn crds() -> Option<PathBuf> {
    let dir = std::env::var_os("TASKSTREAM_STRIMZI_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("deploy/strimzi/crds"));
    dir.is_dir().then_some(dir)
}

fn validate(python: &PathBuf, crds: &PathBuf, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python)
        .arg(repo().join("deploy/validate_manifests.py"))
        .arg(crds)
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn strimzi_manifests_validate_against_the_crds_and_a_typo_fails_the_check() {
    let (Some(python), Some(crds)) = (python(), crds()) else {
        skip_or_fail("validating the Strimzi manifests (needs the Strimzi CRDs and the .venv)");
        return;
    };
    let ready = Command::new(&python)
        .args(["-c", "import jsonschema, yaml"])
        .status()
        .unwrap()
        .success();
    if !ready {
        skip_or_fail("validating the Strimzi manifests (pip install -r deploy/requirements.txt)");
        return;
    }
    let manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/strimzi"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(manifests.len() >= 4);
    let (ok, text) = validate(&python, &crds, &manifests);
    assert!(ok, "{text}");
    assert!(
        text.contains("9 Strimzi resource(s) checked, 0 problem(s)"),
        "{text}"
    );

    // A misspelled field is an error, not something the API server would quietly drop.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    let committed = std::fs::read_to_string(repo().join("deploy/strimzi/kafka-dev.yaml")).unwrap();
    std::fs::write(
        &typo,
        committed.replace("deleteClaim: false", "deleteClam: false"),
    )
    .unwrap();
    let (ok, text) = validate(&python, &crds, &[typo]);
    assert!(!ok, "{text}");
    assert!(text.contains("'deleteClam' was unexpected"), "{text}");
}
