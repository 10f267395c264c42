//! Log output: human-readable or JSON lines, filtered by `RUST_LOG`.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log records are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The default filter of the services and operator commands: `info`, with
/// librdkafka's chatter at `warn`.
pub const DEFAULT_FILTER: &str = "info,librdkafka=warn,sqlx=warn,tower_http=warn";

/// The default filter of commands whose output is a report on standard
/// output (the demonstrations): only errors, so the report stands alone.
pub const REPORT_FILTER: &str = "error";

/// Installs the global subscriber with [`DEFAULT_FILTER`]; `RUST_LOG` overrides it.
pub fn init(format: LogFormat) {
    init_with(format, DEFAULT_FILTER)
}

/// Installs the global subscriber with `default` as its filter; `RUST_LOG` overrides it.
pub fn init_with(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
