//! `ulp-bench`: the benchmark suite. It drives the real `ulp` binary and
//! runtime against real processes it starts itself, prints a table
//! (measure, value, baseline, ratio, target, verdict) and writes the same
//! rows as JSON. Measurement only: nothing here changes how ulp works.
//!
//! Measures (one module each): `latency` (apply/revert, one process),
//! `pause` (what a probe thread in the target feels), `fleet` (many
//! processes), `callcost` (one call: unpadded, padded, patched), `preload`
//! (start, malloc, memory with the runtime merely preloaded), `watch`
//! (exec to patched under `ulp watch`, a burst of process starts),
//! `switch` (a two-function patch: the runtime's switch plan), `inject`
//! (`--load-runtime` into a busy process started without the runtime).
//!
//! Every process it starts is killed when it is done with it, on error,
//! and on SIGINT/SIGTERM/SIGHUP (see `procs`); every wait is bounded.

mod callcost;
mod fleet;
mod inject;
mod kit;
mod latency;
mod pause;
mod preload;
mod procs;
mod report;
mod switch;
mod watch;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use report::{json_str, row_json, Row, Unit};

const HELP: &str = "\
Usage: ulp-bench [--quick] [--out FILE] [--fleet N,N,...] [--only LIST]
                 [--ulp PATH] [--runtime PATH] [--workdir DIR] [--keep]

Measures ulp on real processes and prints a table (measure, value,
baseline, ratio, target, verdict); writes the rows as JSON too.

  --quick          a smoke run: few repetitions, a fleet of 20 (< 1 minute)
  --out FILE       where the JSON goes (default bench-results.json)
  --fleet LIST     fleet sizes (default 100,400,1000; --quick: 20)
  --only LIST      some of: latency,pause,fleet,callcost,preload,watch,
                   switch,inject
  --ulp PATH       the ulp binary (default: next to ulp-bench)
  --runtime PATH   the runtime libpulp.so (default: next to ulp-bench)
  --workdir DIR    scratch directory (default: a new one under /tmp)
  --keep           keep the scratch directory
  --nice N         run the suite and everything it starts at this nice
                   value, to be less disturbed by other work on the machine
                   (default -10 where allowed; 0 leaves it alone)

Needs gcc; valgrind for the instruction counts. Run as root, or with
ptrace allowed on your own processes.
";

const MEASURES: &[&str] = &[
    "latency", "pause", "fleet", "callcost", "preload", "watch", "switch", "inject",
];

pub struct Config {
    pub quick: bool,
    pub fleet: Vec<usize>,
    only: Vec<String>,
    out: PathBuf,
    ulp: PathBuf,
    runtime: PathBuf,
    workdir: PathBuf,
    keep: bool,
    nice: i32,
}

impl Config {
    /// The repetition count: `full` normally, `quick` with --quick.
    pub fn reps(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    fn parse(args: &[String]) -> Result<Config, String> {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_default();
        let mut c = Config {
            quick: false,
            fleet: Vec::new(),
            only: Vec::new(),
            out: PathBuf::from("bench-results.json"),
            ulp: here.join("ulp"),
            runtime: here.join("libpulp.so"),
            workdir: std::env::temp_dir().join(format!("ulp-bench-{}", std::process::id())),
            keep: false,
            nice: -10,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name {
                "-h" | "--help" => return Err(String::new()),
                "--quick" => c.quick = true,
                "--keep" => c.keep = true,
                "--out" => c.out = value()?.into(),
                "--ulp" => c.ulp = value()?.into(),
                "--runtime" => c.runtime = value()?.into(),
                "--workdir" => c.workdir = value()?.into(),
                "--nice" => {
                    let v = value()?;
                    c.nice = v
                        .parse()
                        .ok()
                        .filter(|n| (-20..=19).contains(n))
                        .ok_or_else(|| format!("--nice: bad value '{v}' (-20..19)"))?;
                }
                "--fleet" => {
                    c.fleet = value()?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            s.trim()
                                .parse()
                                .ok()
                                .filter(|&n: &usize| n > 0 && n <= 10_000)
                                .ok_or_else(|| format!("--fleet: bad count '{s}' (1..10000)"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "--only" => {
                    c.only = value()?.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(bad) = c.only.iter().find(|m| !MEASURES.contains(&m.as_str())) {
                        return Err(format!(
                            "--only: unknown measure '{bad}' (one of {})",
                            MEASURES.join(",")
                        ));
                    }
                }
                _ => return Err(format!("unknown argument '{a}'")),
            }
        }
        if c.fleet.is_empty() {
            c.fleet = if c.quick {
                vec![20]
            } else {
                vec![100, 400, 1000]
            };
        }
        Ok(c)
    }

    fn runs(&self, m: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == m)
    }
}

/// The first line `cmd` prints, or "".
fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

struct Machine {
    nproc: usize,
    cpu: String,
    kernel: String,
    date: String,
    load_start: String,
    git: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
            load_start: read_trim("/proc/loadavg"),
            git: first_line(
                Command::new("git").args(["-C", repo, "describe", "--always", "--dirty"]),
            ),
        }
    }
}

/// Sets the suite's nice value (inherited by everything it starts);
/// returns the value in effect.
fn set_nice(n: i32) -> i32 {
    if n != 0 {
        // SAFETY: setpriority on the calling process has no memory effects.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
            eprintln!(
                "ulp-bench: could not set nice {n} ({}); running at the current priority",
                std::io::Error::last_os_error()
            );
        }
    }
    // SAFETY: as above. (-1 is also a valid answer; errno is not needed.)
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Removes the scratch directories of earlier runs that were killed before
/// they could clean up (`ulp-bench-PID` under the temporary directory,
/// whose PID no longer runs).
fn remove_stale_workdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ulp-bench-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match Config::parse(&args) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ulp-bench: {e}\n\n{HELP}");
            return ExitCode::from(64);
        }
    };
    procs::install_signal_handlers();
    let nice = set_nice(cfg.nice);
    remove_stale_workdirs();
    let machine = Machine::probe();
    let began = Instant::now();
    eprintln!(
        "ulp-bench: building the fixtures in {}",
        cfg.workdir.display()
    );
    let kit = match kit::Kit::build(&cfg.workdir, &cfg.ulp, &cfg.runtime, cfg.keep) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ulp-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    type Measure = fn(&kit::Kit, &Config, &mut Vec<Row>) -> Result<(), String>;
    let table: [(&str, Measure); 8] = [
        ("latency", latency::run),
        ("pause", pause::run),
        ("fleet", fleet::run),
        ("callcost", callcost::run),
        ("preload", preload::run),
        ("watch", watch::run),
        ("switch", switch::run),
        ("inject", inject::run),
    ];
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut timings = Vec::new();
    for (name, f) in table {
        if !cfg.runs(name) {
            continue;
        }
        let load = read_trim("/proc/loadavg");
        eprintln!("ulp-bench: measuring {name} (load average {load})");
        let t0 = Instant::now();
        if let Err(e) = f(&kit, &cfg, &mut rows) {
            eprintln!("ulp-bench: {name}: {e}");
            rows.push(Row::missing(
                format!("{name}: failed"),
                Unit::Secs,
                e.clone(),
            ));
            errors.push(format!("{name}: {e}"));
        }
        timings.push((name, t0.elapsed().as_secs_f64(), load));
    }
    let load_end = read_trim("/proc/loadavg");

    println!(
        "ulp-bench{}: {} | {} CPUs: {} | Linux {} | load avg {} -> {} | nice {nice}",
        if cfg.quick { " --quick" } else { "" },
        machine.date,
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.load_start,
        load_end
    );
    println!(
        "ulp: {} ({}), git {}\n",
        kit.ulp_version,
        cfg.ulp.display(),
        machine.git
    );
    print!("{}", report::table(&rows));
    println!("\nNotes:");
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("  {}: {}", r.measure, r.note);
    }

    let mut j = String::from("{\n");
    j += &format!(
        "  \"suite\": \"ulp-bench\",\n  \"quick\": {},\n  \"nice\": {nice},\n",
        cfg.quick
    );
    j += &format!(
        "  \"machine\": {{\"nproc\": {}, \"cpu\": {}, \"kernel\": {}, \"date\": {}, \"loadavg_start\": {}, \"loadavg_end\": {}}},\n",
        machine.nproc,
        json_str(&machine.cpu),
        json_str(&machine.kernel),
        json_str(&machine.date),
        json_str(&machine.load_start),
        json_str(&load_end)
    );
    j += &format!(
        "  \"ulp\": {{\"version\": {}, \"binary\": {}, \"runtime\": {}, \"git\": {}}},\n",
        json_str(&kit.ulp_version),
        json_str(&cfg.ulp.to_string_lossy()),
        json_str(&cfg.runtime.to_string_lossy()),
        json_str(&machine.git)
    );
    let t: Vec<String> = timings
        .iter()
        .map(|(n, s, _)| format!("{}: {s:.1}", json_str(n)))
        .collect();
    j += &format!(
        "  \"seconds\": {{\"total\": {:.1}, {}}},\n",
        began.elapsed().as_secs_f64(),
        t.join(", ")
    );
    let l: Vec<String> = timings
        .iter()
        .map(|(n, _, l)| format!("{}: {}", json_str(n), json_str(l)))
        .collect();
    j += &format!("  \"loadavg_before\": {{{}}},\n", l.join(", "));
    let e: Vec<String> = errors.iter().map(|e| json_str(e)).collect();
    j += &format!("  \"errors\": [{}],\n", e.join(", "));
    let r: Vec<String> = rows
        .iter()
        .map(|r| format!("    {}", row_json(r)))
        .collect();
    j += &format!("  \"rows\": [\n{}\n  ]\n}}\n", r.join(",\n"));
    if let Err(e) = std::fs::write(&cfg.out, j) {
        eprintln!("ulp-bench: writing {}: {e}", cfg.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "ulp-bench: wrote {} in {:.0} s",
        cfg.out.display(),
        began.elapsed().as_secs_f64()
    );
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
