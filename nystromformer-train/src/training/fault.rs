//! Fault injection for the crash tests: the environment variable [`FAULT_ENV`] names one point
//! of a run where the process kills itself with `kill -9` (as a power cut would) or fails a
//! write (as a full disk would). Unset, nothing happens.
//!
//! Points: `kill-after-step:N` (after optimizer step `N`), `kill-while-writing:NAME-EPOCH` (half
//! of record `NAME` of checkpoint `EPOCH` in its temporary file, e.g. `optim-2`),
//! `fail-writing:NAME-EPOCH` (that record's write fails), `kill-before-final-evaluation`.

/// The environment variable naming the fault.
pub const FAULT_ENV: &str = "NYSTROMFORMER_TRAIN_FAULT";

/// Whether the fault asked for is `kind:detail` (`kind` alone when `detail` is empty).
pub fn asked(kind: &str, detail: &str) -> bool {
    let Ok(fault) = std::env::var(FAULT_ENV) else {
        return false;
    };
    match detail.is_empty() {
        true => fault == kind,
        false => fault == format!("{kind}:{detail}"),
    }
}

/// Kills this process with SIGKILL: no destructor, no flush, no exit code.
pub fn kill_self(when: &str) -> ! {
    eprintln!("{FAULT_ENV}: killing the process {when}");
    let _ = std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status();
    // `kill` is missing: abort is as abrupt.
    std::process::abort();
}
