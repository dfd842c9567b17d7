//! Running a command as a child process and measuring it from the outside: wall time,
//! CPU time (user + system) and peak resident set size from `wait4(2)`'s `rusage`, so the
//! figures cover only that process — not the simulator or the benchmark driving it.
//!
//! One Linux subtlety decides how the child is started. A process created by `fork` or
//! `posix_spawn` from the benchmark starts life in (a copy of) the benchmark's address
//! space, and `exec` folds that address space's high-water mark into the new program's
//! `ru_maxrss`. The benchmark holds a simulated tenant of hundreds of MiB, so a direct
//! child would report *the benchmark's* peak whenever its own is lower. The child is
//! therefore started by a small launcher: this executable, re-run with [`LAUNCH_REPORT_ENV`]
//! set (see [`serve_as_launcher_if_asked`]), which after its own `exec` has a fresh, small
//! address space, forks the measured program from it and reports that program's
//! `rusage`.

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

/// Set in the environment of a launcher: the file it writes the measured program's
/// `rusage` to.
pub const LAUNCH_REPORT_ENV: &str = "REDELIVER_MEASURE_REPORT";

static LAUNCHER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Call first thing in a benchmark's `main`. When this process was started as a launcher
/// by [`run`], it runs the measured program, writes its figures and exits with its code
/// (never returning); otherwise it records that [`run`] may use this executable as the
/// launcher, and returns.
pub fn serve_as_launcher_if_asked() {
    let Some(report) = std::env::var_os(LAUNCH_REPORT_ENV) else {
        LAUNCHER.store(true, std::sync::atomic::Ordering::Relaxed);
        return;
    };
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("launcher: no program to run");
        std::process::exit(127);
    };
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove(LAUNCH_REPORT_ENV);
    let outcome = cmd.spawn().and_then(wait);
    match outcome {
        Ok((exit, cpu, rss)) => {
            let line = format!(
                "{} {} {rss}\n",
                exit.map_or_else(|| "signal".to_string(), |c| c.to_string()),
                cpu.as_micros()
            );
            if let Err(e) = std::fs::write(&report, line) {
                eprintln!("launcher: cannot write {}: {e}", report.to_string_lossy());
                std::process::exit(127);
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("launcher: cannot run the measured program: {e}");
            std::process::exit(127);
        }
    }
}

/// Spawns `cmd` and waits for it (blocking: call from `spawn_blocking`). Through the
/// launcher when this executable is one (see the module docs); otherwise directly, and
/// the peak RSS is then only an upper bound.
pub fn run(cmd: Command) -> std::io::Result<ChildRun> {
    if !LAUNCHER.load(std::sync::atomic::Ordering::Relaxed) {
        return spawn(cmd)?.wait();
    }
    let report = tempfile::NamedTempFile::new()?;
    let mut run = spawn(through_launcher(&cmd, report.path())?)?.wait()?;
    let text = std::fs::read_to_string(report.path())?;
    (run.exit, run.cpu, run.max_rss_kib) = parse_report(&text).ok_or_else(|| {
        std::io::Error::other(format!(
            "the launcher did not report the measured program (exit {:?}): {text:?}",
            run.exit
        ))
    })?;
    Ok(run)
}

/// A child started by [`spawn`], its output going to temporary files, not yet reaped.
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    out: File,
    err: File,
    started: Instant,
}

/// Spawns `cmd` with stdin closed and stdout/stderr captured, for [`Running::wait`]. The
/// child is started directly (so [`Running::pid`] is its own, for [`proc_memory`]); its
/// `ru_maxrss` may then include this process's address space (see the module docs), so
/// read its memory from `/proc` while it runs.
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

/// Stops a child started by [`spawn`]: SIGTERM, then up to `grace` for it to exit and be
/// measured. `None` when it did not exit in time (it is then killed with SIGKILL).
pub async fn terminate(child: Running, grace: Duration) -> anyhow::Result<Option<ChildRun>> {
    use anyhow::Context as _;
    let raw_pid = libc::pid_t::try_from(child.pid()).context("pid out of range")?;
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(raw_pid, libc::SIGTERM) };
    let waiter = tokio::task::spawn_blocking(move || child.wait());
    match tokio::time::timeout(grace, waiter).await {
        Ok(run) => Ok(Some(run??)),
        Err(_) => {
            // SAFETY: as above; the waiter reaps it.
            unsafe { libc::kill(raw_pid, libc::SIGKILL) };
            Ok(None)
        }
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

/// The same command, run by this executable acting as a launcher.
fn through_launcher(cmd: &Command, report: &std::path::Path) -> std::io::Result<Command> {
    let mut launcher = Command::new(std::env::current_exe()?);
    launcher
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env(LAUNCH_REPORT_ENV, report);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => launcher.env(key, v),
            None => launcher.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        launcher.current_dir(dir);
    }
    Ok(launcher)
}

/// `"<exit code|signal> <cpu µs> <maxrss KiB>"`, as the launcher writes it.
fn parse_report(text: &str) -> Option<(Option<i32>, Duration, u64)> {
    let mut parts = text.split_whitespace();
    let exit = match parts.next()? {
        "signal" => None,
        code => Some(code.parse().ok()?),
    };
    let cpu = Duration::from_micros(parts.next()?.parse().ok()?);
    let rss = parts.next()?.parse().ok()?;
    Some((exit, cpu, rss))
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

    #[test]
    fn reads_the_launcher_report() {
        assert_eq!(
            parse_report("2 1500000 204800\n"),
            Some((Some(2), Duration::from_millis(1500), 204800))
        );
        assert_eq!(
            parse_report("signal 10 20"),
            Some((None, Duration::from_micros(10), 20))
        );
        assert_eq!(parse_report(""), None);
        assert_eq!(parse_report("0 x 1"), None);
    }
}
