//! `taskstream`: parses the command line, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use taskstream::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    taskstream::telemetry::init(cli.log_format);
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
