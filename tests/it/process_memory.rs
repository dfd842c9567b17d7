//! The binary as a process, as the kernel sees it: what it asks for its memory.

/// Transparent huge pages would make every 2 MiB the heap touches resident whole, a fixed
/// cost each replica pays again (docs/benchmarks.md, section Controller at 100,000
/// objects). The binary refuses them before its runtime starts, whatever the node's
/// setting; `/proc/<pid>/status` says whether it took (Linux 5.0 and later).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_running_binary_has_refused_transparent_huge_pages() {
    // Its first line is printed from inside the runtime: `main` has run by then.
    let (mut sim, _lines, _first) = crate::fault_support::standalone_sim().await;
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
