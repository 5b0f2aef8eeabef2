//! The `herald` command: run the gateway and talk to one.

mod allocator;
mod cli;
mod config;
mod publish;
mod rendezvous;
mod serve;
mod tail;
mod token;

use clap::Parser;

fn main() -> std::process::ExitCode {
    allocator::configure();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
