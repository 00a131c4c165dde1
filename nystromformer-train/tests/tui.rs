//! The dashboard under a pseudo-terminal: with stdout a terminal, `train` draws burn-train's TUI
//! (alternate screen, metric panels), then leaves it and exits when training ends.

use std::io::Write;
use std::process::Command;

/// Whether util-linux's `script`, which gives the child a pseudo-terminal, is installed (else
/// the test says it is skipped).
fn script_available() -> bool {
    let found = Command::new("script").arg("--version").output().is_ok();
    if !found {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: `script` (util-linux) is not installed"
        );
    }
    found
}

#[test]
fn dashboard_renders_in_a_terminal_and_exits() {
    if !script_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nystromformer-tui-{}", std::process::id()));
    let typescript = dir.with_extension("typescript");
    std::fs::remove_dir_all(&dir).ok();
    let train = format!(
        "stty cols 120 rows 40; {} --device flex train listops --artifact-dir {} --set train_size=256 \
         --set valid_size=32 --set test_size=32 --set min_len=5 --set max_len=40 --set total_steps=40 \
         --set warmup_steps=4 --set eval_frequency=20 --set num_workers=0",
        env!("CARGO_BIN_EXE_nystromformer-train"),
        dir.display()
    );
    let status = Command::new("script")
        .args(["-qfec", &train])
        .arg(&typescript)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script runs");
    let screen = std::fs::read(&typescript).expect("typescript written");
    std::fs::remove_file(&typescript).ok();
    let summary_written = dir.join("summary.json").is_file();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        status.success(),
        "training under a terminal failed: {status}"
    );
    assert!(summary_written, "the run finished and wrote its summary");

    let find = |needle: &[u8]| screen.windows(needle.len()).position(|w| w == needle);
    let enter = find(b"\x1b[?1049h").expect("the dashboard switches to the alternate screen");
    let leave = find(b"\x1b[?1049l").expect("and leaves it at the end");
    let dashboard = &screen[enter..leave];
    for panel in [&b"Loss"[..], b"Accuracy", b"Learning"] {
        assert!(
            dashboard.windows(panel.len()).any(|w| w == panel),
            "the dashboard shows {}",
            String::from_utf8_lossy(panel)
        );
    }
}

#[test]
fn quitting_the_dashboard_fails_the_run_and_writes_nothing_final() {
    if !script_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nystromformer-tui-quit-{}", std::process::id()));
    let typescript = dir.with_extension("typescript");
    std::fs::remove_dir_all(&dir).ok();
    let train = format!(
        "stty cols 120 rows 40; {} --device flex train listops --artifact-dir {} --set train_size=256 \
         --set valid_size=32 --set test_size=32 --set min_len=5 --set max_len=40 \
         --set total_steps=100000 --set warmup_steps=4 --set eval_frequency=20 --set num_workers=0",
        env!("CARGO_BIN_EXE_nystromformer-train"),
        dir.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &train])
        .arg(&typescript)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script runs");
    // Once training is under way: `q` opens the quit popup, `s` stops the training.
    while !dir.join("checkpoint/state-2.json").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut keys = child.stdin.take().unwrap();
    keys.write_all(b"q").unwrap();
    keys.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    keys.write_all(b"s").unwrap();
    keys.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(keys);
    let status = child.wait().unwrap();
    let screen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    std::fs::remove_file(&typescript).ok();
    let finished = dir.join("summary.json").exists() || dir.join("model.bpk").exists();
    let resumable = nystromformer_train::training::last_checkpoint(&dir).is_some();
    std::fs::remove_dir_all(&dir).ok();
    assert!(!status.success(), "a stopped run must fail: {status}");
    assert!(!finished, "nothing final after a stop");
    assert!(resumable, "its checkpoints stay for --resume");
    assert!(
        screen.contains("training interrupted") && screen.contains("--resume continues"),
        "{}",
        &screen[screen.len().saturating_sub(2000)..]
    );
}
