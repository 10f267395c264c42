//! The Java runtime and Apache Kafka's jars: found on this machine, and the
//! jars fetched from Maven Central once, then served from a cache.
//!
//! The jars are named by the repository's `kafka/pom.xml` (compiled into this
//! crate). Maven copies them into `<cache>/<kafka version>-<pom hash>/lib`;
//! a later run finds that directory and never starts Maven again, so the
//! cache key changes whenever the pom does. `~/.m2` keeps Maven's own copy.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ClusterError;

/// The Maven project that names Kafka's jars, exactly as committed.
pub const KAFKA_POM: &str = include_str!("../../../kafka/pom.xml");

/// The Maven project that names the Debezium connector plugin's jars.
pub const DEBEZIUM_POM: &str = include_str!("../../../kafka/debezium/pom.xml");

/// Overrides where the jars are cached (default `~/.cache/taskstream/kafka`).
pub const CACHE_ENV: &str = "TASKSTREAM_KAFKA_CACHE";

/// The oldest Java that Kafka 4 brokers run on.
const MIN_JAVA: u32 = 17;

/// A Java runtime and the classpath holding Kafka's broker and tools.
#[derive(Debug, Clone)]
pub struct KafkaRuntime {
    java: PathBuf,
    lib: PathBuf,
    classpath: OsString,
}

impl KafkaRuntime {
    /// Finds Java 17+ and Kafka's jars, fetching the jars with Maven if they
    /// are not cached yet.
    pub fn locate() -> Result<Self, ClusterError> {
        let java = find_java()?;
        let lib = fetch_jars()?;
        let mut classpath = OsString::from(lib.join("*"));
        // Java expands `dir/*` to every jar of dir itself.
        classpath.push("");
        Ok(Self {
            java,
            lib,
            classpath,
        })
    }

    /// The `java` executable.
    pub fn java(&self) -> &Path {
        &self.java
    }

    /// The directory of jars.
    pub fn lib(&self) -> &Path {
        &self.lib
    }

    /// The value for `java -cp`.
    pub fn classpath(&self) -> &std::ffi::OsStr {
        &self.classpath
    }
}

/// The Kafka release `kafka/pom.xml` pins.
pub fn kafka_version() -> &'static str {
    KAFKA_POM
        .split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map_or("unknown", |(version, _)| version.trim())
}

/// Makes sure Kafka's jars are in the cache and returns their directory.
/// Starts Maven only when they are not there yet.
pub fn fetch_jars() -> Result<PathBuf, ClusterError> {
    let dir = cache_root().join(format!("{}-{:016x}", kafka_version(), fnv1a(KAFKA_POM)));
    fetch(&dir, KAFKA_POM, "lib", &[])
}

/// Makes sure the Debezium PostgreSQL connector's jars are in the cache and
/// returns the directory to give a Connect worker as `plugin.path` (it holds
/// one plugin directory, `debezium-connector-postgres`).
pub fn fetch_debezium_plugin() -> Result<PathBuf, ClusterError> {
    let dir = cache_root().join(format!(
        "debezium-{}-{:016x}",
        debezium_version(),
        fnv1a(DEBEZIUM_POM)
    ));
    fetch(
        &dir,
        DEBEZIUM_POM,
        "plugins/debezium-connector-postgres",
        // Kafka's own jars come from the worker's class path.
        &[
            "-DincludeScope=runtime",
            "-DexcludeGroupIds=org.apache.kafka",
        ],
    )?;
    Ok(dir.join("plugins"))
}

/// The Debezium release `kafka/debezium/pom.xml` pins.
pub fn debezium_version() -> &'static str {
    DEBEZIUM_POM
        .split_once("<debezium.version>")
        .and_then(|(_, rest)| rest.split_once("</debezium.version>"))
        .map_or("unknown", |(version, _)| version.trim())
}

/// Copies the dependencies of `pom` into `dir/<into>` with Maven, unless
/// that directory is already there, and returns it.
fn fetch(dir: &Path, pom: &str, into: &str, args: &[&str]) -> Result<PathBuf, ClusterError> {
    let lib = dir.join(into);
    if lib.is_dir() {
        return Ok(lib);
    }
    let mvn = find_on_path("mvn")
        .ok_or_else(|| ClusterError::Maven("`mvn` is not on PATH (install Maven 3.6+)".into()))?;
    let parent = lib.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)
        .map_err(ClusterError::io(format!("creating {}", parent.display())))?;
    let pom_file = dir.join("pom.xml");
    std::fs::write(&pom_file, pom)
        .map_err(ClusterError::io(format!("writing {}", pom_file.display())))?;
    // Copy into a directory of this process's own, then rename: a second
    // process fetching at the same time never sees half a classpath.
    let partial = dir.join(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let output = Command::new(&mvn)
        .arg("-q")
        .arg("-B")
        .arg("-Dstyle.color=never")
        .arg("-f")
        .arg(&pom_file)
        .arg("dependency:copy-dependencies")
        .args(args)
        .arg(format!("-DoutputDirectory={}", partial.display()))
        .output()
        .map_err(|e| ClusterError::Maven(format!("running {}: {e}", mvn.display())))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(ClusterError::Fetch {
            status: output.status.to_string(),
            output: last_lines(&text, 40),
        });
    }
    match std::fs::rename(&partial, &lib) {
        Ok(()) => Ok(lib),
        // Another process finished first; its copy is as good as ours.
        Err(_) if lib.is_dir() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(lib)
        }
        Err(e) => Err(ClusterError::io(format!(
            "moving the jars to {}",
            lib.display()
        ))(e)),
    }
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("taskstream").join("kafka")
}

/// `$JAVA_HOME/bin/java`, else `java` on PATH; refuses anything older than 17.
fn find_java() -> Result<PathBuf, ClusterError> {
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join("java"))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("java"))
        .ok_or_else(|| {
            ClusterError::Java("`java` is not on PATH and JAVA_HOME is not set".into())
        })?;
    let output = Command::new(&java)
        .arg("-version")
        .output()
        .map_err(|e| ClusterError::Java(format!("running {}: {e}", java.display())))?;
    let banner = String::from_utf8_lossy(&output.stderr);
    match java_major(&banner) {
        Some(major) if major >= MIN_JAVA => Ok(java),
        Some(major) => Err(ClusterError::Java(format!(
            "{} is Java {major}",
            java.display()
        ))),
        None => Err(ClusterError::Java(format!(
            "cannot tell the version of {} from {:?}",
            java.display(),
            banner.lines().next().unwrap_or("")
        ))),
    }
}

/// The major version in `java -version`'s banner: `"17.0.15"` → 17,
/// `"1.8.0_402"` → 8.
fn java_major(banner: &str) -> Option<u32> {
    let quoted = banner.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '+', '_']);
    match parts.next()?.parse().ok()? {
        1 => parts.next()?.parse().ok(),
        major => Some(major),
    }
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// FNV-1a: a hash that stays the same across Rust releases, for cache keys.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_major_reads_old_and_new_version_banners() {
        assert_eq!(
            java_major("openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime"),
            Some(17)
        );
        assert_eq!(java_major("java version \"1.8.0_402\""), Some(8));
        assert_eq!(java_major("openjdk version \"25\" 2025-09-16"), Some(25));
        assert_eq!(java_major("openjdk version \"21-ea\""), Some(21));
        assert_eq!(java_major("no quotes here"), None);
    }

    #[test]
    fn the_pinned_debezium_version_is_read_from_its_pom() {
        assert_eq!(debezium_version(), "3.6.1.Final");
    }

    #[test]
    fn the_pinned_kafka_version_is_read_from_the_pom() {
        let version = kafka_version();
        assert!(version.starts_with("4."), "{version}");
    }
}
