//! One `taskstream up` per data directory: a second one is refused at once,
//! naming the first, and a lock left by a killed process blocks nobody.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binary::{launch, up_args, ChildGuard};

const BIN: &str = env!("CARGO_BIN_EXE_taskstream");

/// Runs the binary to completion (killing it after a minute, if it hangs),
/// returning whether it succeeded and its standard error.
pub fn run_to_exit(args: &[&str]) -> (bool, String) {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let out = match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("`taskstream {}` did not exit", args.join(" "));
        }
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_up_on_a_data_dir_in_use_is_refused_and_a_killed_ones_lock_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (mut first, line) = launch(&up_args(data_dir), "warn", Stdio::inherit());
    assert!(line.starts_with("http: "), "{line}");
    let endpoints = std::fs::read(dir.path().join("endpoints.json")).unwrap();
    let pid = first.0.id();

    // Refused whether or not it would serve the registry too.
    for extra in [&[][..], &["--event-format", "json"]] {
        let mut args = up_args(data_dir);
        args.extend(extra);
        let (ok, stderr) = run_to_exit(&args);
        assert!(
            !ok,
            "a second up {extra:?} started on the same data directory"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ")
                && stderr.contains(&format!("`taskstream up` (pid {pid})")),
            "{stderr}"
        );
        assert!(stderr.contains(data_dir), "{stderr}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("endpoints.json")).unwrap(),
        endpoints,
        "the refused up left the first one's endpoints alone"
    );

    // The standalone registry would serve the same registry.db.
    let (ok, stderr) = run_to_exit(&["registry", "--http", "127.0.0.1:0", "--data-dir", data_dir]);
    assert!(
        !ok,
        "a registry started on the data directory of a running up"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("(pid {pid})")), "{stderr}");

    // SIGKILL leaves the lock file behind, but not the lock.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(dir.path().join("taskstream.lock").exists());
    let (mut next, line) = launch(&up_args(data_dir), "warn", Stdio::inherit());
    assert!(line.starts_with("http: "), "{line}");
    let lock = std::fs::read_to_string(dir.path().join("taskstream.lock")).unwrap();
    assert!(
        lock.starts_with(&format!("{}\n", next.0.id())),
        "the lock file names its new holder: {lock:?}"
    );
    next.0.kill().unwrap();
    next.0.wait().unwrap();
}

#[test]
fn an_up_is_refused_on_the_data_dir_of_a_running_registry() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (registry, line): (ChildGuard, String) = launch(
        &["registry", "--http", "127.0.0.1:0", "--data-dir", data_dir],
        "warn",
        Stdio::inherit(),
    );
    assert!(line.starts_with("schema-registry: "), "{line}");
    let (ok, stderr) = run_to_exit(&up_args(data_dir));
    assert!(!ok, "up started a second registry on the same registry.db");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("`taskstream registry` (pid {})", registry.0.id())),
        "{stderr}"
    );
}
