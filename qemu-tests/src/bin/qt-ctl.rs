//! `edgebox ctl` as its own program, for tests that drive an appliance the
//! way an operator does.

use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: edgebox::ctl::CtlArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match edgebox::ctl::run(cli.args, std::env::temp_dir()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
