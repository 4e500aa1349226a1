//! Measure 5: what merely preloading the runtime costs a process that is
//! never patched: process start, malloc-heavy code in 1 and 2 threads,
//! resident memory. Runs with and without LD_PRELOAD are interleaved, so
//! machine noise falls on both sides alike; ratios are within this run.

use std::path::Path;
use std::process::Command;

use crate::callcost::{collected, have_valgrind};
use crate::kit::{Kit, BARE_LIB, EMPTY_LIB, ONE_SEGMENT_LIB, TOOL_TIMEOUT};
use crate::procs::{self, Proc};
use crate::report::{median, Row, Target, Unit};
use crate::Config;

/// Callgrind's instruction total for `program ARGS`, preloaded or not.
fn instructions(kit: &Kit, program: &str, args: &[&str], preload: bool) -> Result<f64, String> {
    instructions_with(kit, program, args, preload.then_some(kit.runtime.as_path()))
}

/// Callgrind's instruction total for `program ARGS` with `lib` (or
/// nothing) preloaded.
fn instructions_with(
    kit: &Kit,
    program: &str,
    args: &[&str],
    lib: Option<&Path>,
) -> Result<f64, String> {
    let mut cmd = Command::new("valgrind");
    cmd.current_dir(&kit.dir).env_remove("LD_PRELOAD");
    if let Some(lib) = lib {
        cmd.env("LD_PRELOAD", lib);
    }
    cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(kit.path(program))
        .args(args);
    let r = procs::run(&mut cmd, TOOL_TIMEOUT, Some(&kit.dir))?;
    if r.code != 0 {
        return Err(format!(
            "valgrind {program} exited {}: {}",
            r.code,
            r.stderr.trim()
        ));
    }
    collected(&r.stderr)
        .map(|(ir, _)| ir)
        .ok_or_else(|| format!("no callgrind totals in: {}", r.stderr.trim()))
}

/// The kB value of `key` in a /proc/PID file of "Key: N kB" lines.
pub fn proc_kib(pid: i32, file: &str, key: &str) -> Result<f64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| format!("reading /proc/{pid}/{file}: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/{file}"))
}

/// Which side goes first alternates, so neither always runs right after
/// the other.
pub fn order(i: usize) -> [bool; 2] {
    if i % 2 == 0 {
        [false, true]
    } else {
        [true, false]
    }
}

/// `reps` runs of `program ARGS` without and with the runtime, interleaved;
/// each prints the time of its own work in ns. Returns the seconds,
/// `[without, with]`.
fn self_timed(
    kit: &Kit,
    reps: usize,
    program: &str,
    args: &[&str],
) -> Result<[Vec<f64>; 2], String> {
    let mut t: [Vec<f64>; 2] = Default::default();
    for i in 0..reps {
        for pre in order(i) {
            let mut cmd = kit.command(program, pre);
            cmd.args(args);
            let r = procs::run(&mut cmd, TOOL_TIMEOUT, Some(&kit.dir))?;
            let ns: f64 = r
                .stdout
                .trim()
                .parse()
                .ok()
                .filter(|_| r.code == 0)
                .ok_or_else(|| {
                    format!("{program} {} failed: {}", args.join(" "), r.both().trim())
                })?;
            t[pre as usize].push(ns * 1e-9);
        }
    }
    Ok(t)
}

/// The row of a [`self_timed`] measure: the preloaded median against the
/// plain one, at most 2 % slower.
fn self_timed_row(measure: String, t: &[Vec<f64>; 2], note: String) -> Row {
    Row::new(measure, Unit::Secs, median(&t[1]))
        .baseline(median(&t[0]))
        .target(Target::RatioAtMost(1.02))
        .samples(&t[1])
        .note(note)
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let valgrind = have_valgrind(kit);

    // Process start: without a preload, with the runtime, and with three
    // other libraries, the floors: an empty `gcc -shared` library (what
    // preloading an ordinary library costs), the barest library in two
    // segments (what any library costs that keeps its code and writable
    // data apart, as the runtime does) and the barest in one read-only
    // segment (what preloading anything costs the loader at all).
    let reps = cfg.reps(500, 40);
    let (empty, bare, one) = (
        kit.path(EMPTY_LIB),
        kit.path(BARE_LIB),
        kit.path(ONE_SEGMENT_LIB),
    );
    let mut sides: Vec<Option<&Path>> = vec![
        None,
        Some(kit.runtime.as_path()),
        Some(empty.as_path()),
        Some(bare.as_path()),
    ];
    if kit.has(ONE_SEGMENT_LIB) {
        sides.push(Some(one.as_path()));
    }
    let mut start: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for i in 0..reps {
        for k in 0..sides.len() {
            // Each side in turn goes first.
            let side = (i + k) % sides.len();
            let r = procs::run(
                &mut kit.command_preloading("hello", sides[side]),
                TOOL_TIMEOUT,
                None,
            )?;
            if r.code != 0 {
                return Err(format!("hello exited {}", r.code));
            }
            start[side].push(r.elapsed.as_secs_f64());
        }
    }
    rows.push(
        Row::new("process start, preloaded: median", Unit::Secs, median(&start[1]))
            .baseline(median(&start[0]))
            .target(Target::RatioAtMost(1.03))
            .samples(&start[1])
            .extra("baseline_samples_median", median(&start[0]))
            .note(format!(
                "spawn + exit + wait of an empty dynamically linked program, {reps} runs each, interleaved; libpulp: 1.09×"
            )),
    );
    let floors = [
        (
            "an empty library",
            format!("the same runs with an empty `gcc -O2 -fPIC -shared` library preloaded instead, interleaved with them ({reps} runs)"),
        ),
        (
            "the barest two-segment library",
            "the floor of any library that keeps code and writable data apart, as the runtime does: one empty function, no data, no relocations, no C start files, no RELRO (`fixtures/bench/bare.c`); its second segment holds only the dynamic section".to_string(),
        ),
        (
            "the barest one-segment library",
            "the floor of any preloaded library: the same function linked by rustc's lld into one read-only segment (`-z rodynamic`, which needs glibc 2.35)".to_string(),
        ),
    ];
    for (k, (what, note)) in floors.into_iter().enumerate() {
        let Some(t) = start.get(k + 2) else {
            continue;
        };
        rows.push(
            Row::new(
                format!("process start, {what} preloaded: median"),
                Unit::Secs,
                median(t),
            )
            .baseline(median(&start[0]))
            .samples(t)
            .note(note),
        );
    }
    if valgrind {
        let with = instructions(kit, "hello", &[], true)?;
        let without = instructions(kit, "hello", &[], false)?;
        rows.push(
            Row::new("process start, preloaded: instructions", Unit::Instr, with)
                .baseline(without)
                .note("callgrind, user-space instructions from the first one of ld.so to exit"),
        );
        for (what, lib) in [
            ("an empty library", &empty),
            ("the barest two-segment library", &bare),
        ] {
            let floor = instructions_with(kit, "hello", &[], Some(lib))?;
            rows.push(
                Row::new(
                    format!("process start, {what} preloaded: instructions"),
                    Unit::Instr,
                    floor,
                )
                .baseline(without)
                .note(format!(
                    "callgrind, as the row above, with {what} preloaded instead"
                )),
            );
        }
    }

    // Malloc-heavy code.
    let pairs: u64 = if cfg.quick { 300_000 } else { 2_000_000 };
    let reps = cfg.reps(21, 3);
    for threads in [1, 2] {
        let (th, n) = (threads.to_string(), pairs.to_string());
        let t = self_timed(kit, reps, "mallocbench", &[&th, &n])?;
        let libpulp = if threads == 1 { "3.7×" } else { "~40×" };
        rows.push(self_timed_row(
            format!("malloc-heavy, {threads} thread(s), preloaded: median"),
            &t,
            format!(
                "{pairs} malloc/free pairs per thread, 16 B..4 kB, median of {reps} runs each, interleaved; libpulp: {libpulp}"
            ),
        ));
        if valgrind {
            let small = (pairs / 10).to_string();
            let th = threads.to_string();
            let with = instructions(kit, "mallocbench", &[&th, &small], true)?;
            let without = instructions(kit, "mallocbench", &[&th, &small], false)?;
            rows.push(
                Row::new(
                    format!("malloc-heavy, {threads} thread(s), preloaded: instructions"),
                    Unit::Instr,
                    with,
                )
                .baseline(without)
                .note(format!(
                    "callgrind, whole process, {small} pairs per thread"
                )),
            );
        }
    }

    // The loader and thread creation: a runtime that hooks dlopen or keeps
    // per-thread state would tax these.
    let reps = cfg.reps(21, 3);
    let rounds: u64 = if cfg.quick { 300 } else { 2000 };
    let lib = kit.path("nopad/libbench.so.1");
    let lib = lib.to_string_lossy();
    for (what, args, note) in [
        (
            "dlopen + dlclose loop",
            vec!["dlopen", &*lib],
            "rounds of dlopen(RTLD_NOW) + dlclose of a library loaded nowhere else",
        ),
        (
            "thread create + join loop",
            vec!["threads"],
            "threads created and joined one after another",
        ),
    ] {
        let n = rounds.to_string();
        let mut a = vec![args[0], n.as_str()];
        a.extend(&args[1..]);
        let t = self_timed(kit, reps, "loaderbench", &a)?;
        rows.push(self_timed_row(
            format!("{what}, preloaded: median"),
            &t,
            format!("{rounds} {note}, median of {reps} runs each, interleaved"),
        ));
        if valgrind {
            // Per round: the run with no rounds (start and exit) subtracted.
            let n = rounds / 10;
            let per_round = |preload: bool| -> Result<f64, String> {
                let mut total = [0.0; 2];
                for (k, count) in [0, n].into_iter().enumerate() {
                    let count = count.to_string();
                    let mut a = vec![args[0], count.as_str()];
                    a.extend(&args[1..]);
                    total[k] = instructions(kit, "loaderbench", &a, preload)?;
                }
                Ok((total[1] - total[0]) / n as f64)
            };
            rows.push(
                Row::new(
                    format!("{what}, preloaded: instructions per round"),
                    Unit::Instr,
                    per_round(true)?,
                )
                .baseline(per_round(false)?)
                .note(format!(
                    "callgrind, whole process: {n} rounds less 0 rounds, divided by {n}"
                )),
            );
        }
    }

    // Resident memory of an idle process. The whole process's figure
    // moves by tens of kB from one process to the next with nothing
    // preloaded (the kernel maps the window around each touched file page
    // when those pages are in its cache): a median of many, and the
    // runtime's own mappings counted alone.
    let reps = cfg.reps(21, 3);
    let mut rss: [Vec<f64>; 2] = Default::default();
    let mut private: [Vec<f64>; 2] = Default::default();
    let mut own = Vec::new();
    for i in 0..reps {
        for pre in order(i) {
            let p = Proc::start(kit.command("bench_target", pre), true)?;
            rss[pre as usize].push(proc_kib(p.pid, "status", "VmRSS:")?);
            private[pre as usize].push(proc_kib(p.pid, "smaps_rollup", "Private_Dirty:")?);
            if pre {
                own.push(mapped_rss(p.pid, &kit.runtime)?);
            }
        }
    }
    rows.push(
        Row::new("resident memory, idle target, preloaded", Unit::KiB, median(&rss[1]))
            .baseline(median(&rss[0]))
            .target(Target::DeltaAtMost(150.0))
            .samples(&rss[1])
            .note(format!(
                "VmRSS of bench_target blocked in read(), median of {reps} processes each; libpulp: +370 kB"
            )),
    );
    rows.push(
        Row::new("private dirty memory, idle target, preloaded", Unit::KiB, median(&private[1]))
            .baseline(median(&private[0]))
            .samples(&private[1])
            .note("Private_Dirty of /proc/PID/smaps_rollup: the memory each process pays for itself (file pages of the runtime are shared between processes)"),
    );
    rows.push(
        Row::new("resident memory of the runtime's own mappings", Unit::KiB, median(&own))
            .samples(&own)
            .note(format!(
                "Rss of the mappings of the runtime's file in /proc/PID/smaps, same processes, median of {reps}"
            )),
    );
    Ok(())
}

/// The resident kB of the mappings of `file` in `pid` (`Rss:` of each of
/// its blocks in /proc/PID/smaps).
fn mapped_rss(pid: i32, file: &std::path::Path) -> Result<f64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))?;
    let canon = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let name = canon.to_string_lossy();
    let mut ours = false;
    let mut kib = 0.0;
    for l in s.lines() {
        match l.strip_prefix("Rss:") {
            Some(v) if ours => {
                kib += v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or(0.0)
            }
            Some(_) => {}
            // A block's first line: "START-END PERMS OFFSET DEV INODE PATH".
            None if l.split_whitespace().next().is_some_and(|f| f.contains('-')) => {
                ours = l.ends_with(&*name);
            }
            None => {}
        }
    }
    Ok(kib)
}
