//! The `unoflow` binary: parses the command line, turns signals into an [`Interrupt`] for the
//! commands that stop gracefully, runs the command, and maps errors to exit codes (2: fix the
//! DAG file or the arguments; 130: interrupted; 1: anything else; 141, as a process stopped by
//! SIGPIPE, and no message when the reader of standard output went away).

use clap::Parser;
use unoflow::cli::output;
use unoflow::cli::{Cli, Command};
use unoflow::interrupt::Interrupt;

/// Models allocate and free a tensor per op: see `unoflow_models::allocator`.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            output::error_line(&format!("error: cannot start the async runtime: {e}"));
            std::process::exit(1);
        }
    };
    let interrupt = Interrupt::new();
    // Commands that commit work as they go stop gracefully (a worker on the SIGTERM its
    // scheduler sends before a time limit or an eviction); the others keep the default
    // disposition of SIGINT (the process ends at once), which is what a user expects of a query.
    let graceful = matches!(cli.command, Command::Run(_) | Command::Worker(_) | Command::Generate(_));
    let code = runtime.block_on(async {
        if graceful {
            tokio::spawn(watch_signals(interrupt.clone()));
        }
        match unoflow::cli::main(cli, interrupt).await {
            Ok(code) => code,
            // The reader of the output went away (`unoflow ops | head -1`): nothing is left to
            // say, and the code a process stopped by SIGPIPE has (as `yes | head -1` gives):
            // not 0, which would call a failed or interrupted run a success.
            Err(_) if output::closed() => 141,
            Err(err) => {
                match &err {
                    unoflow::Error::Spec(_) => output::error_line(&err.to_string()),
                    _ => output::error_line(&format!("error: {err}")),
                }
                err.exit_code()
            }
        }
    });
    // Exit without waiting for blocking work a second signal abandoned (it holds no commit).
    runtime.shutdown_background();
    std::process::exit(code);
}

/// Raises the interrupt's level at each SIGINT or SIGTERM and says what it means.
async fn watch_signals(interrupt: Interrupt) {
    #[cfg(unix)]
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            output::error_line(&format!("warning: cannot watch SIGTERM: {e}"));
            return;
        }
    };
    loop {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        match interrupt.raise() {
            1 => output::error_line("\nstopping: work in progress finishes and is kept; signal again to stop at once"),
            _ => output::error_line("\nstopping now; committed work is kept"),
        }
    }
}
