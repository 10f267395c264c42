//! What each subcommand does: the component processes
//! ([`crate::processes`]), the ops commands ([`crate::ops`]) and `schema`.

use crate::cli::{Cli, Command};
use crate::{ops, processes};

/// Runs the parsed command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => processes::up(args).await,
        Command::Api(args) => processes::api(args).await,
        Command::Relay(args) => processes::relay(args).await,
        Command::Notifier(args) => processes::notifier(args).await,
        Command::Auditor(args) => processes::auditor(args).await,
        Command::Agent(args) => processes::agent(*args).await,
        Command::Processor(args) => processes::processor(args).await,
        Command::Saga(args) => processes::saga(args).await,
        Command::DevBroker(args) => processes::dev_broker(args).await,
        Command::Registry(args) => processes::registry(args).await,
        Command::Lag(args) => ops::lag::run(args).await,
        Command::Endpoints(args) => ops::endpoints::run(args),
        Command::Dlq(command) => ops::dlq::run(command).await,
        Command::Topics(command) => ops::topics::run(command).await,
        Command::Users(command) => ops::users::run(command),
        Command::Cdc(command) => ops::cdc::run(command),
        #[cfg(feature = "bench")]
        Command::Bench(args) => ops::bench::run(args).await,
        #[cfg(feature = "bench")]
        Command::Demo(command) => ops::demo::run(command).await,
        Command::Schema(command) => crate::schema::run(command).await,
    }
}
