//! What the processes under test used during a run, from `/proc`: peak resident memory
//! (`VmHWM` in `/proc/<pid>/status`) and CPU time (`utime + stime` in `/proc/<pid>/stat`).
//!
//! Before each run the memory high-water mark is reset (`echo 5 > /proc/<pid>/clear_refs`,
//! allowed for our own processes), so that the peak is the run's own. CPU time is taken at the
//! end of the warm-up and at the end of the run, and divided by the requests answered: each
//! process's CPU cost per request, the load generator's included.

use serde::Serialize;

/// A process whose resource use is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl Watched {
    /// A process given by PID only: named after its `comm`.
    pub fn by_pid(pid: u32) -> Watched {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Watched {
            name: format!("pid {pid} ({})", comm.trim()),
            pid,
        }
    }

    /// This process.
    pub fn this(name: &str) -> Watched {
        Watched {
            name: name.to_string(),
            pid: std::process::id(),
        }
    }
}

/// One process's resource use over a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    pub pid: u32,
    /// Peak resident set size in KiB (`VmHWM`).
    pub peak_rss_kib: u64,
    /// Resident set size at the end of the run, in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// `run` when the peak was reset before the run; `process start` when it could not be.
    pub peak_since: &'static str,
    /// CPU seconds (user + system) over the measured time.
    pub cpu_s: f64,
    /// `cpu_s` per answered request, in microseconds.
    pub cpu_us_per_request: Option<f64>,
}

/// Resets the processes' peak marks; returns, per process, whether that worked.
pub fn reset_peaks(watched: &[Watched]) -> Vec<bool> {
    watched
        .iter()
        .map(|w| std::fs::write(format!("/proc/{}/clear_refs", w.pid), b"5").is_ok())
        .collect()
}

/// CPU seconds used so far by each watched process (`None` for one that is gone), and by the
/// whole machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuMark {
    pub processes: Vec<Option<f64>>,
    pub machine: Option<MachineCpu>,
}

/// Machine-wide CPU seconds from the first line of `/proc/stat`, all cores together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    /// user + nice + system: time charged to processes.
    pub busy_s: f64,
    /// irq + softirq: interrupt work charged to no process (loopback TCP delivery is mostly here).
    pub irq_s: f64,
    /// Time the hypervisor gave this machine's CPUs to someone else.
    pub steal_s: f64,
}

/// What the rest of the machine did during a run: a busy machine skews the figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interference {
    /// Cores kept busy, on average, by processes other than the watched ones (other users, an
    /// external cluster that is not watched).
    pub other_cores: f64,
    /// Cores spent in interrupt handlers, charged to no process: mostly the loopback network
    /// traffic of the run itself.
    pub irq_cores: f64,
    /// Cores taken away by the hypervisor (steal), on average.
    pub steal_cores: f64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Reads the CPU time of the watched processes and of the machine now.
pub fn cpu_mark(watched: &[Watched]) -> CpuMark {
    let per_s = ticks_per_second();
    let processes = watched
        .iter()
        .map(|w| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", w.pid)).ok()?;
            parse_stat_ticks(&stat).map(|ticks| ticks as f64 / per_s)
        })
        .collect();
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| parse_machine_ticks(&text))
        .map(|ticks| MachineCpu {
            busy_s: ticks.busy as f64 / per_s,
            irq_s: ticks.irq as f64 / per_s,
            steal_s: ticks.steal as f64 / per_s,
        });
    CpuMark { processes, machine }
}

/// The CPU seconds each watched process used between two marks.
fn process_deltas(from: &CpuMark, to: &CpuMark) -> Vec<Option<f64>> {
    to.processes
        .iter()
        .enumerate()
        .map(|(i, end)| {
            let start = from.processes.get(i).copied().flatten()?;
            Some((end.as_ref()? - start).max(0.0))
        })
        .collect()
}

/// The rest of the machine's CPU use between two marks `seconds` apart.
pub fn interference(from: &CpuMark, to: &CpuMark, seconds: f64) -> Option<Interference> {
    let (start, end) = (from.machine?, to.machine?);
    let watched: f64 = process_deltas(from, to).into_iter().flatten().sum();
    let seconds = seconds.max(f64::MIN_POSITIVE);
    Some(Interference {
        other_cores: ((end.busy_s - start.busy_s - watched) / seconds).max(0.0),
        irq_cores: ((end.irq_s - start.irq_s) / seconds).max(0.0),
        steal_cores: ((end.steal_s - start.steal_s) / seconds).max(0.0),
    })
}

/// Machine-wide ticks by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy: u64,
    pub irq: u64,
    pub steal: u64,
}

/// Ticks from the `cpu` line of `/proc/stat`:
/// `cpu user nice system idle iowait irq softirq steal guest guest_nice`.
pub fn parse_machine_ticks(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(MachineTicks {
        busy: at(0) + at(1) + at(2),
        irq: at(5) + at(6),
        steal: at(7),
    })
}

/// Reads every watched process's use (processes that are gone are left out). `reset` says whose
/// peak was reset; `cpu_from`/`cpu_to` come from [`cpu_mark`] around the measured time.
pub fn usage(
    watched: &[Watched],
    reset: &[bool],
    cpu_from: &CpuMark,
    cpu_to: &CpuMark,
    requests: u64,
) -> Vec<ProcessUsage> {
    let cpu = process_deltas(cpu_from, cpu_to);
    watched
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).ok()?;
            let (peak, rss) = parse_status(&status);
            let cpu_s = cpu.get(i).copied().flatten().unwrap_or(0.0);
            Some(ProcessUsage {
                name: w.name.clone(),
                pid: w.pid,
                peak_rss_kib: peak?,
                rss_kib: rss.unwrap_or(0),
                peak_since: if reset.get(i).copied().unwrap_or(false) {
                    "run"
                } else {
                    "process start"
                },
                cpu_s,
                cpu_us_per_request: (requests > 0).then(|| cpu_s * 1e6 / requests as f64),
            })
        })
        .collect()
}

/// `(VmHWM, VmRSS)` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1 with the name as field 2.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `21.4 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let text =
            "Name:\tchorus\nVmPeak:\t  900000 kB\nVmHWM:\t   21904 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(parse_status(text), (Some(21904), Some(20480)));
        assert_eq!(parse_status("Name: x\n"), (None, None));
        assert_eq!(mib(21904), "21.4 MiB");
    }

    #[test]
    fn machine_ticks_and_interference() {
        let text = "cpu  100 5 50 1000 7 3 2 40 0 0\ncpu0 50 2 25 500 3 1 1 20 0 0\n";
        assert_eq!(
            parse_machine_ticks(text),
            Some(MachineTicks {
                busy: 155,
                irq: 5,
                steal: 40
            })
        );
        assert_eq!(parse_machine_ticks("intr 1 2\n"), None);
        let mark = |watched: f64, busy: f64, irq: f64, steal: f64| CpuMark {
            processes: vec![Some(watched)],
            machine: Some(MachineCpu {
                busy_s: busy,
                irq_s: irq,
                steal_s: steal,
            }),
        };
        // 2 s: processes were busy for 3 CPU-seconds, 1 of them ours.
        let from = mark(10.0, 100.0, 1.0, 5.0);
        let rest = interference(&from, &mark(11.0, 103.0, 2.0, 5.5), 2.0).unwrap();
        assert_eq!(rest.other_cores, 1.0);
        assert_eq!(rest.irq_cores, 0.5);
        assert_eq!(rest.steal_cores, 0.25);
        let none = interference(&CpuMark::default(), &mark(1.0, 1.0, 1.0, 1.0), 1.0);
        assert_eq!(none, None);
    }

    #[test]
    fn stat_ticks_skip_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(281));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_process_is_readable_and_resettable() {
        let me = Watched::by_pid(std::process::id());
        assert!(me.name.starts_with(&format!("pid {} (", me.pid)));
        let gone = Watched {
            name: "gone".into(),
            pid: u32::MAX,
        };
        let watched = [me, gone, Watched::this("me")];
        let reset = reset_peaks(&watched);
        assert!(!reset[1]);
        let from = cpu_mark(&watched);
        assert!(from.processes[0].is_some() && from.processes[1].is_none());
        let mut spin = 0u64;
        for i in 0..2_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        let to = cpu_mark(&watched);
        let used = usage(&watched, &reset, &from, &to, 10);
        // The process that does not exist is left out.
        assert_eq!(used.len(), 2);
        assert!(used[0].peak_rss_kib > 0);
        assert!(used[0].peak_rss_kib >= used[0].rss_kib);
        assert!(used[0].cpu_s >= 0.0);
        assert_eq!(used[0].cpu_us_per_request, Some(used[0].cpu_s * 1e6 / 10.0));
        assert_eq!(used[1].name, "me");
        assert_eq!(
            usage(&watched, &reset, &from, &to, 0)[0].cpu_us_per_request,
            None
        );
        let rest = interference(&from, &to, 1.0).expect("/proc/stat is readable");
        assert!(rest.other_cores >= 0.0 && rest.steal_cores >= 0.0);
    }
}
