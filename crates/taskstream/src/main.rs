//! `taskstream`: parses the command line, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use taskstream::cli::Cli;
use taskstream::commands::run;

fn main() -> ExitCode {
    taskstream::shutdown_guard::install();
    let cli = Cli::parse();
    #[cfg(feature = "bench")]
    let filter = match cli.command {
        taskstream::cli::Command::Demo(_) => taskstream::telemetry::REPORT_FILTER,
        _ => taskstream::telemetry::DEFAULT_FILTER,
    };
    #[cfg(not(feature = "bench"))]
    let filter = taskstream::telemetry::DEFAULT_FILTER;
    taskstream::telemetry::init_with(cli.log_format, filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Threads still blocked in a client library (a Kafka client closing
    // against a broker that is gone) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
