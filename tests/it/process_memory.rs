//! The binary as a process, as the kernel sees it: what it asks for its memory.

/// Transparent huge pages would make every 2 MiB the heap touches resident whole, a fixed
/// cost each replica pays again (docs/benchmarks.md, section Controller at 100,000
/// objects). The binary refuses them before its runtime starts, whatever the node's
/// setting; `/proc/<pid>/status` says whether it took (Linux 5.0 and later).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_running_binary_has_refused_transparent_huge_pages() {
    use std::process::Stdio;
    use std::time::Duration;

    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"))
        .args(["sim", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its first line is printed from inside the runtime: `main` has run by then.
    let stdout = sim.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the simulator starts")
        .unwrap()
        .expect("the simulator keeps running");
    let pid = sim.id().expect("still running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no THP_enabled line (a kernel before 5.0?):\n{status}"));
    assert_eq!(thp, "0", "transparent huge pages still allowed:\n{status}");
    sim.kill().await.ok();
}
