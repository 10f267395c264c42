//! `taskstream endpoints`: where a running `taskstream up` listens, read
//! from its `endpoints.json`, so that scripts and other clients can find it:
//! `KAFKA_BOOTSTRAP=$(taskstream endpoints kafka) python consume.py`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, ValueEnum};

use crate::config::Endpoints;

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    /// Print only this endpoint's address (for scripts); all of them otherwise.
    #[arg(value_enum)]
    pub which: Option<Which>,
    /// The data directory of the `taskstream up` to ask about.
    #[arg(long, env = "TASKSTREAM_DATA_DIR", default_value = ".taskstream")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The Task API, `http://HOST:PORT`.
    Http,
    /// The Kafka bootstrap servers, `HOST:PORT`.
    Kafka,
    /// The schema registry, `http://HOST:PORT`.
    SchemaRegistry,
}

/// The report for `args`: one address, or `name: address` lines.
fn report(args: &EndpointsArgs) -> anyhow::Result<String> {
    let endpoints = Endpoints::read(&args.data_dir)?.ok_or_else(|| {
        anyhow!(
            "no taskstream up has announced its endpoints in {} (start one with `taskstream up`, or pass --data-dir)",
            args.data_dir.display()
        )
    })?;
    let registry = || {
        endpoints.schema_registry.clone().ok_or_else(|| {
            anyhow!("this taskstream up runs no schema registry (it writes JSON events)")
        })
    };
    Ok(match args.which {
        Some(Which::Http) => format!("{}\n", endpoints.http),
        Some(Which::Kafka) => format!("{}\n", endpoints.kafka),
        Some(Which::SchemaRegistry) => format!("{}\n", registry()?),
        None => {
            let mut out = format!("http: {}\nkafka: {}\n", endpoints.http, endpoints.kafka);
            if let Some(url) = &endpoints.schema_registry {
                out.push_str(&format!("schema-registry: {url}\n"));
            }
            out
        }
    })
}

/// Runs `taskstream endpoints`.
pub fn run(args: EndpointsArgs) -> anyhow::Result<()> {
    crate::ops::emit(&report(&args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, which: Option<Which>) -> EndpointsArgs {
        EndpointsArgs {
            which,
            data_dir: dir.to_owned(),
        }
    }

    #[test]
    fn each_endpoint_is_printed_alone_or_all_of_them_as_up_printed_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            Endpoints::path(dir.path()),
            r#"{"http":"http://127.0.0.1:8080","kafka":"127.0.0.1:39137","schema-registry":"http://127.0.0.1:8081"}"#,
        )
        .unwrap();
        assert_eq!(
            report(&args(dir.path(), Some(Which::Kafka))).unwrap(),
            "127.0.0.1:39137\n"
        );
        assert_eq!(
            report(&args(dir.path(), Some(Which::Http))).unwrap(),
            "http://127.0.0.1:8080\n"
        );
        assert_eq!(
            report(&args(dir.path(), None)).unwrap(),
            "http: http://127.0.0.1:8080\nkafka: 127.0.0.1:39137\nschema-registry: http://127.0.0.1:8081\n"
        );
    }

    #[test]
    fn without_a_running_up_the_error_says_where_it_looked_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let error = report(&args(dir.path(), None)).unwrap_err().to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        assert!(error.contains("taskstream up"), "{error}");
        assert_eq!(error.lines().count(), 1);
    }

    #[test]
    fn asking_for_the_registry_of_an_up_without_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            Endpoints::path(dir.path()),
            r#"{"http":"http://127.0.0.1:8080","kafka":"127.0.0.1:39137"}"#,
        )
        .unwrap();
        let error = report(&args(dir.path(), Some(Which::SchemaRegistry)))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no schema registry"), "{error}");
    }
}
