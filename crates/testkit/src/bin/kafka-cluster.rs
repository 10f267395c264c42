//! Starts Apache Kafka for development: prints the bootstrap address, then
//! runs until Ctrl-C (or SIGTERM), when it stops the nodes and deletes their
//! files. `fetch` only fills the jar cache (what CI does once).

use std::time::Instant;

use clap::{Parser, Subcommand};
use taskstream_testkit::{
    debezium_version, fetch_debezium_plugin, fetch_jars, kafka_version, KafkaCluster, Shape,
};

#[derive(Parser)]
#[command(about = "Apache Kafka (from Maven Central) on random loopback ports")]
struct Args {
    /// Brokers in the cluster: 1 (also the controller), or 3 (replication factor 3,
    /// min.insync.replicas 2, and a dedicated controller).
    #[arg(long, default_value_t = 1, value_parser = parse_brokers)]
    brokers: usize,
    #[command(subcommand)]
    command: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Fetches Kafka's jars and the Debezium connector plugin into the cache (with Maven, the
    /// first time only) and exits.
    Fetch,
}

fn parse_brokers(value: &str) -> Result<usize, String> {
    match value {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!(
            "{value:?} is not a supported cluster size (use 1 or 3)"
        )),
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let began = Instant::now();
    if let Some(Action::Fetch) = args.command {
        let lib = fetch_jars()?;
        eprintln!(
            "Kafka {} jars in {} ({:.1} s)",
            kafka_version(),
            lib.display(),
            began.elapsed().as_secs_f64()
        );
        let plugins = fetch_debezium_plugin()?;
        eprintln!(
            "Debezium {} connector plugin in {} ({:.1} s)",
            debezium_version(),
            plugins.display(),
            began.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let shape = if args.brokers == 3 {
        Shape::ThreeNodes
    } else {
        Shape::SingleNode
    };
    let cluster = KafkaCluster::start(shape)?;
    eprintln!(
        "Kafka {} with {} node(s) ready in {:.1} s; files in {}",
        kafka_version(),
        cluster.nodes(),
        began.elapsed().as_secs_f64(),
        cluster.dir().display()
    );
    // The bootstrap address alone on stdout, for scripts.
    println!("{}", cluster.bootstrap_servers());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    })?;
    eprintln!("stopping Kafka");
    cluster.stop();
    Ok(())
}
