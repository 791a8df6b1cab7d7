//! `eventsource`: the operator command line of an eventsource event store. See `--help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    eventsource_cli::Cli::new().run().await
}
