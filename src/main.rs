use clap::Parser;
use convnext_explorer::cli::{self, Cli};

fn main() {
    // A panic is a bug, but the user still deserves one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("convnext-explorer: internal error: {info}");
    }));
    let cli = Cli::parse();
    let result = if cli.command.is_some() {
        cli::run(cli)
    } else {
        run_app(cli)
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run_app(_cli: Cli) -> anyhow::Result<()> {
    // The desktop app is not built yet; the engine and the command line are.
    anyhow::bail!("the desktop app is not part of this build yet; use a subcommand (see --help)")
}
