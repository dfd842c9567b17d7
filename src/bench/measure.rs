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
pub fn run(cmd: Command) -> std::io::Result<ChildRun> {
    spawn(cmd)?.wait()
}

/// A child started by [`spawn`], its output going to temporary files, not yet reaped.
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    out: File,
    err: File,
    started: Instant,
}

/// Spawns `cmd` with stdin closed and stdout/stderr captured, for [`Running::wait`].
pub fn spawn(mut cmd: Command) -> std::io::Result<Running> {
    let out = tempfile::tempfile()?;
    let err = tempfile::tempfile()?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let started = Instant::now();
    let child = cmd.spawn()?;
    Ok(Running {
        child,
        out,
        err,
        started,
    })
}

impl Running {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote on stderr so far.
    pub fn stderr_so_far(&mut self) -> std::io::Result<String> {
        read_all(&mut self.err)
    }

    /// Waits for the child to exit (blocking) and measures it.
    pub fn wait(mut self) -> std::io::Result<ChildRun> {
        let (exit, cpu, max_rss_kib) = wait(self.child)?;
        let wall = self.started.elapsed();
        let stdout = read_all(&mut self.out)?;
        let stderr = read_all(&mut self.err)?;
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
}

/// Memory of a live process from `/proc/<pid>/status`, in KiB: resident now (`VmRSS`) and
/// its peak so far (`VmHWM`). `None` where `/proc` is not available or the process is gone.
pub fn proc_memory(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time of a live process so far, from `/proc/<pid>/stat`.
#[cfg(unix)]
pub fn proc_cpu(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are fixed.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `)`.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Not available off Unix.
#[cfg(not(unix))]
pub fn proc_cpu(_pid: u32) -> Option<Duration> {
    None
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

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_a_live_child_from_proc() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; sleep 5");
        let running = spawn(cmd).expect("sh runs");
        let pid = running.pid();
        std::thread::sleep(Duration::from_millis(300));
        let (rss, hwm) = proc_memory(pid).expect("/proc/<pid>/status");
        assert!(rss > 100 && hwm >= rss, "rss {rss} KiB, hwm {hwm} KiB");
        assert!(proc_cpu(pid).is_some());
        // SAFETY: signalling our own live child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let r = running.wait().expect("reaped");
        assert_eq!(r.exit, None, "killed by the signal");
        assert!(r.wall < Duration::from_secs(5));
    }
}
