//! The `unoflow` binary: parses the command line, runs the command, and maps errors to exit
//! codes (2: fix the DAG file or the arguments; 130: interrupted; 1: anything else).

use clap::Parser;

fn main() {
    let cli = unoflow::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(unoflow::cli::main(cli)) {
        Ok(code) => code,
        Err(err) => {
            match &err {
                unoflow::Error::Spec(_) => eprintln!("{err}"),
                _ => eprintln!("error: {err}"),
            }
            err.exit_code()
        }
    };
    // Exit without waiting for background tasks (the signal watcher).
    runtime.shutdown_background();
    std::process::exit(code);
}
