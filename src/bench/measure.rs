//! Running a command as a child process and measuring it from the outside: wall time,
//! CPU time (user + system) and peak resident set size from `wait4(2)`'s `rusage`, so the
//! figures cover only that process — not the simulator or the benchmark driving it.

use std::fs::File;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a measured child process ran.
#[derive(Debug, Clone, Default)]
pub struct ChildRun {
    /// Exit code (`None` when killed by a signal).
    pub exit: Option<i32>,
    /// Wall time from spawn to exit.
    pub wall: Duration,
    /// User + system CPU time of the child.
    pub cpu: Duration,
    /// Peak resident set size of the child in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
    /// Everything the child wrote on stdout.
    pub stdout: String,
    /// The last 4 KiB of its stderr.
    pub stderr_tail: String,
}

/// Spawns `cmd` and waits for it (blocking: call from `spawn_blocking`).
pub fn run(mut cmd: Command) -> std::io::Result<ChildRun> {
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let started = Instant::now();
    let child = cmd.spawn()?;
    let (exit, cpu, max_rss_kib) = wait(child)?;
    let wall = started.elapsed();
    let stdout = read_all(&mut out)?;
    let stderr = read_all(&mut err)?;
    let tail_start = stderr
        .char_indices()
        .map(|(i, _)| i)
        .find(|i| stderr.len() - i <= 4096)
        .unwrap_or(0);
    Ok(ChildRun {
        exit,
        wall,
        cpu,
        max_rss_kib,
        stdout,
        stderr_tail: stderr[tail_start..].to_string(),
    })
}

fn read_all(f: &mut File) -> std::io::Result<String> {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(unix)]
fn wait(child: std::process::Child) -> std::io::Result<(Option<i32>, Duration, u64)> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| std::io::Error::other("child pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child; the pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // The child is reaped; `Child` must not wait on it again (dropping it does not).
    drop(child);
    let exit = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    // Linux reports ru_maxrss in KiB.
    let rss = u64::try_from(usage.ru_maxrss).unwrap_or(0);
    Ok((exit, cpu, rss))
}

#[cfg(not(unix))]
fn wait(mut child: std::process::Child) -> std::io::Result<(Option<i32>, Duration, u64)> {
    let status = child.wait()?;
    Ok((status.code(), Duration::ZERO, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn measures_a_child_that_burns_cpu_and_memory() {
        // Python is not guaranteed; sh with a busy loop and `head` into a variable are.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done; exit 3");
        let r = run(cmd).expect("sh runs");
        assert_eq!(r.exit, Some(3));
        assert_eq!(r.stdout.trim(), "done");
        assert!(r.cpu > Duration::from_millis(10), "cpu {:?}", r.cpu);
        assert!(r.max_rss_kib > 100, "rss {} KiB", r.max_rss_kib);
        assert!(r.wall >= r.cpu / 2);
    }
}
