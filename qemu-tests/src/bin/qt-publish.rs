//! `edgebox publish` as its own program, so a test can cut it off (kill it,
//! or the VM under it) at any moment.

use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: edgebox::publish::PublishArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match edgebox::publish::run(cli.args, std::env::temp_dir()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("publish: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
