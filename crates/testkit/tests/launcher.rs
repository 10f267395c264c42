//! The `kafka-cluster` launcher leaves nothing behind: Ctrl-C stops the
//! JVMs and deletes the cluster's files, and killing the launcher outright
//! still takes its JVMs with it. Skipped loudly without Java and Maven;
//! failed instead with `TASKSTREAM_REQUIRE_KAFKA=1`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use taskstream_testkit::{skip_or_fail, KafkaRuntime};

const PATIENCE: Duration = Duration::from_secs(120);

/// A running launcher, its bootstrap address and its cluster directory.
struct Launcher {
    child: Child,
    bootstrap: String,
    dir: PathBuf,
}

impl Launcher {
    fn start(what: &str) -> Option<Self> {
        if let Err(e) = KafkaRuntime::locate() {
            skip_or_fail(what, &e.to_string());
            return None;
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_kafka-cluster"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the launcher starts");
        let (lines, received) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_lines.send((true, line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send((false, line));
            }
        });
        let (mut bootstrap, mut dir) = (None, None);
        let deadline = Instant::now() + PATIENCE;
        while bootstrap.is_none() || dir.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (is_stdout, line) = received
                .recv_timeout(left)
                .expect("the launcher prints its address in time");
            if is_stdout {
                bootstrap = Some(line);
            } else if let Some((_, path)) = line.split_once("files in ") {
                dir = Some(PathBuf::from(path));
            } else if line.starts_with("error:") {
                panic!("the launcher failed: {line}");
            }
        }
        Some(Self {
            child,
            bootstrap: bootstrap.unwrap(),
            dir: dir.unwrap(),
        })
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the launcher did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The live (not zombie) children of `parent`, read from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_owned()
            };
            field("PPid:") == parent.to_string() && !field("State:").starts_with('Z')
        })
        .collect()
}

fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|state| !state.trim().starts_with('Z'))
    })
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctrl_c_stops_the_launchers_broker_and_deletes_its_files() {
    let Some(mut launcher) = Launcher::start("the launcher's Ctrl-C") else {
        return;
    };
    assert!(
        launcher.bootstrap.starts_with("127.0.0.1:"),
        "{}",
        launcher.bootstrap
    );
    assert!(launcher
        .dir
        .join("node-1")
        .join("logs")
        .join("server.log")
        .is_file());
    let jvms = children_of(launcher.pid());
    assert_eq!(jvms.len(), 1, "one broker JVM: {jvms:?}");

    launcher.signal(libc::SIGINT);
    let status = launcher.wait();
    assert!(status.success(), "{status}");
    assert!(
        !launcher.dir.exists(),
        "{} is left behind",
        launcher.dir.display()
    );
    assert!(
        jvms.iter().all(|pid| !is_running(*pid)),
        "a JVM outlived the launcher"
    );
}

#[test]
fn killing_the_launcher_outright_takes_its_broker_with_it() {
    let Some(mut launcher) = Launcher::start("killing the launcher") else {
        return;
    };
    let jvms = children_of(launcher.pid());
    assert_eq!(jvms.len(), 1, "one broker JVM: {jvms:?}");

    launcher.signal(libc::SIGKILL);
    launcher.wait();
    wait_until("the broker JVM to die with its parent", || {
        jvms.iter().all(|pid| !is_running(*pid))
    });
    // The next cluster started on this machine sweeps the abandoned directory.
    let _ = std::fs::remove_dir_all(&launcher.dir);
}
