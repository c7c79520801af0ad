//! CPU time, per thread and per process, for the per-stage accounting `bench` and the run
//! summary print: on a machine whose cores inference already fills, what a stage costs is the
//! CPU it takes, not the wall time it waits.
//!
//! Helper threads that libraries start (ONNX Runtime's intra-op pool, FFmpeg's decoder threads)
//! inherit the name of the thread that created them. [`named`] gives them a recognizable one,
//! which also makes them readable in `top -H`, and [`threads_cpu`] sums their CPU by name.

use std::time::Duration;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clock ids exist on every Linux.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process, threads that have exited included.
pub(crate) fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Measures the calling thread's CPU from `start()` on.
#[derive(Clone, Copy)]
pub(crate) struct Span(Duration);

impl Span {
    pub(crate) fn start() -> Span {
        Span(thread_cpu())
    }
    pub(crate) fn elapsed(&self) -> Duration {
        thread_cpu().saturating_sub(self.0)
    }
}

fn thread_name() -> [u8; 16] {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included.
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    buf
}

fn set_thread_name(buf: &[u8; 16]) {
    // SAFETY: `buf` is NUL-terminated within 16 bytes (the kernel limit).
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

/// Runs `f` with the calling thread renamed to `name` (at most 15 bytes kept), so that threads
/// `f` starts are born with that name; the old name is restored afterwards.
pub(crate) fn named<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let old = thread_name();
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    set_thread_name(&buf);
    let out = f();
    set_thread_name(&old);
    out
}

/// Summed CPU time of this process's live threads named `name` (as [`named`] gave it).
pub(crate) fn threads_cpu(name: &str) -> Duration {
    let name = &name.as_bytes()[..name.len().min(15)];
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for task in dir.flatten() {
        let p = task.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else {
            continue;
        };
        if comm.trim_end().as_bytes() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(p.join("stat")) else {
            continue;
        };
        // The name may hold spaces or parentheses: fields start after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += num(11) + num(12);
    }
    Duration::from_secs_f64(ticks as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU as getrusage(RUSAGE_THREAD) counts it: a second clock, independent of
    /// the one under test.
    fn rusage_cpu() -> Duration {
        // SAFETY: an all-zero rusage is valid, and getrusage fills it.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(r.ru_utime) + tv(r.ru_stime)
    }

    /// Works until this thread has used `d` of CPU by getrusage's count, however long that
    /// takes in wall time on a loaded machine (a wall-clock spin measured 20 ms of CPU in 60 ms
    /// when other work shared the cores).
    fn spin(d: Duration) {
        let start = rusage_cpu();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while rusage_cpu().saturating_sub(start) < d && std::time::Instant::now() < deadline {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    #[test]
    fn thread_cpu_counts_work_not_sleep() {
        let s = Span::start();
        std::thread::sleep(Duration::from_millis(60));
        let slept = s.elapsed();
        let s = Span::start();
        spin(Duration::from_millis(60));
        let worked = s.elapsed();
        assert!(
            slept < Duration::from_millis(20),
            "sleeping cost {slept:?} of CPU"
        );
        // 60 ms by getrusage; the thread clock agrees to within a little more than the last
        // spin step.
        assert!(
            worked >= Duration::from_millis(55) && worked < Duration::from_millis(80),
            "60 ms of work measured {worked:?}"
        );
    }

    #[test]
    fn threads_started_inside_named_carry_the_name() {
        let h = named("cpu-test-helper", || {
            std::thread::spawn(|| {
                spin(Duration::from_millis(120));
                threads_cpu("cpu-test-helper")
            })
        });
        let seen = h.join().unwrap_or_default();
        // 120 ms by getrusage; /proc counts in clock ticks (10 ms).
        assert!(
            seen >= Duration::from_millis(100) && seen < Duration::from_millis(200),
            "helper CPU {seen:?}"
        );
        let mine = String::from_utf8_lossy(&thread_name()).into_owned();
        assert!(!mine.starts_with("cpu-test-helpe"), "name restored, got {mine}");
    }
}
