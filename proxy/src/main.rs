//! `switchyard`: the node agent and, until the agent lands, the flag-driven router.

mod admin;
mod agent;
mod cli;
mod config;
mod http;
mod ipsec;
mod metrics;
mod policy;
mod punt;
mod router;
mod servers;
mod show;
mod state;

fn main() -> std::process::ExitCode {
    let cli = match config::parse_command_line() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("switchyard: error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        cli::Command::Agent(args) => agent::run(args),
        cli::Command::Router(args) => router::run(args),
        cli::Command::Show(args) => show::run(&args),
        cli::Command::Trace(args) => show::trace(&args),
        cli::Command::Policy(args) => policy::run(&args),
        cli::Command::Config(args) => config::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
