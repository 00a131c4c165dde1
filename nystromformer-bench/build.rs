//! Records the commit the bench is built from as `NYSTROMFORMER_BENCH_COMMIT`, so that a record
//! names the code that ran rather than the checkout it runs in (a binary carried to another
//! machine, or an older build run in a newer checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NYSTROMFORMER_BENCH_COMMIT={commit}");
    // A new commit moves HEAD (in the worktree's git directory) or the branch it names (in the
    // common one, which a worktree shares); a directory is scanned for any change.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        for path in ["refs/heads", "packed-refs"] {
            println!("cargo:rerun-if-changed={common}/{path}");
        }
    }
}
