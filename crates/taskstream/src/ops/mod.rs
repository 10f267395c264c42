//! Operating taskstream, apart from the components that run it: consumer
//! lag by Burrow's rules, dead letters, the Kafka users and their ACLs, the
//! declared topics, the Debezium connector's configuration and its Kafka
//! Connect cluster, and the
//! benchmark and the book's demonstrations (with the `bench` feature).

pub mod access;
pub mod agent;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod catch_up;
pub mod cdc;
pub mod connect;
#[cfg(feature = "bench")]
pub mod demo;
pub mod dlq;
pub mod endpoints;
pub mod lag;
pub mod lag_rules;
pub mod topics;
pub mod users;

/// Writes a command's report to stdout. A reader that went away early
/// (`| head`) ends the output quietly instead of a panic.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
