use clap::Parser;
use convnext_explorer::cli::{self, Cli};

fn main() {
    // Output piped into `head` should end the program quietly, as it ends `ls`, not be a
    // "failed printing to stdout" panic.
    #[cfg(unix)]
    // SAFETY: called first thing, before any other thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    convnext_explorer::base::allocator::keep_freed_memory();
    convnext_explorer::base::pool::candle_ops_inline();
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

#[cfg(feature = "app")]
fn run_app(cli: Cli) -> anyhow::Result<()> {
    // Unless told otherwise, inference leaves the window a core of its own, so that a profile
    // run does not starve the frames.
    let threads = cli
        .threads
        .unwrap_or_else(convnext_explorer::app::default_worker_threads);
    convnext_explorer::base::device::set_threads(threads)?;
    convnext_explorer::app::run(convnext_explorer::app::StartOptions {
        weights: cli.weights,
        device: cli.device,
        image: cli.image,
    })
}

#[cfg(not(feature = "app"))]
fn run_app(_cli: Cli) -> anyhow::Result<()> {
    anyhow::bail!("this build has no desktop app (built without the `app` feature); use a subcommand (see --help)")
}
