//! What every binary of the workspace does around its command: set up CPU memory reuse, run,
//! and turn an error into one `error: …` line on stderr and a failing exit code.

use std::process::ExitCode;

/// Runs a binary's `command` and reports its error, if any, as `error: MESSAGE`.
pub fn run_main(command: impl FnOnce() -> Result<(), String>) -> ExitCode {
    // Reuse freed tensor buffers instead of unmapping them (twice as fast on flex).
    nystromformer::cpu_memory::retain_freed_memory();
    match command() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
