//! Measure 3: a fleet of N small targets (the bench target blocked in
//! read(), running as `ulpb_fleet`), total time to apply the patch to all
//! of them and to revert it from all of them.
//!
//! Ways to reach every process, all timed end to end:
//! * fleet mode: `ulp trigger -j J FILE` with no -p (every process with the
//!   runtime). Other processes with the runtime on the machine are part
//!   of its work too (they are skipped: they lack libbench).
//! * sequential fallback, when fleet mode is refused as a usage error
//!   (exit 64): one `ulp trigger -p PID FILE` after the other.
//! * `ulp trigger -p ulpb_fleet FILE`: one ulp run over the processes of
//!   that name, whatever the fleet mode.
//!
//! Every target is asked afterwards whether it runs the new (or old) code.

use std::time::{Duration, Instant};

use crate::kit::{Kit, FLEET_NAME};
use crate::latency::{phases_in, phases_line};
use crate::procs::{kill_all, Proc};
use crate::report::{median, percentile, Row, Target, Unit};
use crate::Config;

/// Checks every target answers `want` to `call`.
fn verify(procs: &mut [Proc], want: &str, what: &str) -> Result<(), String> {
    let mut wrong = 0;
    let mut first = String::new();
    for p in procs.iter_mut() {
        if let Err(e) = p.expect("call", want) {
            wrong += 1;
            if first.is_empty() {
                first = e;
            }
        }
    }
    if wrong > 0 {
        return Err(format!(
            "{what}: {wrong} of {} targets do not run the expected code ({first})",
            procs.len()
        ));
    }
    Ok(())
}

fn summary(out: &str) -> String {
    out.lines()
        .rev()
        .find(|l| l.contains("Processes patched"))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn limit(n: usize) -> Option<Target> {
    match n {
        400 => Some(Target::AtMost(70e-3)),
        1000 => Some(Target::AtMost(200e-3)),
        _ => None,
    }
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let j = jobs.to_string();
    // Each round starts a fleet afresh, so that every round's apply is each
    // process's first (it loads the container); the rows are the medians
    // of the rounds (one sample each would move by a fifth between runs).
    let rounds = cfg.reps(3, 1);
    for &n in &cfg.fleet {
        let mut runs: Vec<Vec<Row>> = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let t0 = Instant::now();
            let mut procs = Vec::with_capacity(n);
            for _ in 0..n {
                procs.push(kit.start_target(FLEET_NAME, &[])?);
            }
            eprintln!(
                "ulp-bench:   {n} targets started in {:.2} s (round {} of {rounds})",
                t0.elapsed().as_secs_f64(),
                round + 1
            );
            let timeout = Duration::from_secs(30) + Duration::from_millis(100) * n as u32;
            let mut these = Vec::new();
            let res = fleet_rows(kit, n, &j, timeout, &mut procs, &mut these);
            kill_all(procs);
            res?;
            runs.push(these);
        }
        rows.extend(medians(runs));
    }
    // What more workers than CPUs cost each process: on the 400 fleet (or
    // the largest one asked for), fresh fleets applied with the default
    // -j and with twice as many workers, in turn.
    if let Some(n) = cfg
        .fleet
        .iter()
        .copied()
        .find(|&n| n == 400)
        .or_else(|| cfg.fleet.iter().copied().max())
    {
        more_workers(kit, n, jobs, rounds, rows)?;
    }
    Ok(())
}

/// The processes' own figures of one `ulp trigger -v` run over a fleet:
/// how long each had every thread stopped for the writes, and how long
/// each spent inside ulp (its `total` phase), in seconds.
fn held(out: &str) -> (Vec<f64>, Vec<f64>) {
    let ms = |rest: &str| -> Option<f64> {
        rest.split(|c: char| c == ',' || c.is_whitespace())
            .find(|w| !w.is_empty())?
            .parse::<f64>()
            .ok()
            .map(|v| v / 1e3)
    };
    let (mut stopped, mut inside) = (Vec::new(), Vec::new());
    for line in out.lines() {
        // "threads stopped: 1 for 0.076 ms, attempts: 1"
        if let Some(rest) = line.split("threads stopped: ").nth(1) {
            if let Some(v) = rest.split(" for ").nth(1).and_then(ms) {
                stopped.push(v);
            }
        }
        // "phases (ms): find 0.102, ..., total 0.660"
        let phases = phases_line(line).and_then(|l| phases_in(l).ok());
        if let Some(&(_, total)) = phases.iter().flatten().find(|(name, _)| name == "total") {
            inside.push(total);
        }
    }
    (stopped, inside)
}

/// A first apply over fresh fleets of `n`, with `-j jobs` and with
/// `-j 2*jobs`, `rounds` fleets each, in turn: the time of each run, and
/// the p99 over the processes of how long each had all its threads
/// stopped and how long it spent inside ulp (`-v`).
fn more_workers(
    kit: &Kit,
    n: usize,
    jobs: usize,
    rounds: usize,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let sides = [jobs, 2 * jobs];
    // Per side: the runs' times, and the runs' p99s of the two figures.
    let mut time: [Vec<f64>; 2] = Default::default();
    let mut stopped: [Vec<f64>; 2] = Default::default();
    let mut inside: [Vec<f64>; 2] = Default::default();
    let timeout = Duration::from_secs(30) + Duration::from_millis(100) * n as u32;
    for round in 0..rounds {
        for k in 0..2 {
            let side = (round + k) % 2;
            let mut procs = Vec::with_capacity(n);
            for _ in 0..n {
                procs.push(kit.start_target(FLEET_NAME, &[])?);
            }
            let j = sides[side].to_string();
            let args = [
                "trigger",
                "-v",
                "-j",
                &j,
                "--timeout",
                "30",
                "bench_livepatch.so",
            ];
            let r = kit.ulp_for(&args, timeout);
            let checked = r.and_then(|r| {
                verify(&mut procs, "3", &format!("fleet {n} apply (-v -j {j})"))
                    .map_err(|e| format!("{e}; ulp said: {}", r.both().trim()))?;
                Ok(r)
            });
            kill_all(procs);
            let r = checked?;
            let (s, i) = held(&r.stdout);
            if s.len() < n || i.len() < n {
                return Err(format!(
                    "fleet {n} apply (-v -j {j}): {} stop and {} phase lines for {n} processes",
                    s.len(),
                    i.len()
                ));
            }
            time[side].push(r.elapsed.as_secs_f64());
            stopped[side].push(percentile(&s, 99.0));
            inside[side].push(percentile(&i, 99.0));
        }
    }
    let (a, b) = (sides[0], sides[1]);
    let how = format!(
        "{rounds} fresh fleets of {n} for each -j, in turn, each process's first apply with `ulp trigger -v`"
    );
    rows.push(
        Row::new(
            format!("fleet {n}: apply all, -j {b} (twice the CPUs)"),
            Unit::Secs,
            median(&time[1]),
        )
        .baseline(median(&time[0]))
        .samples(&time[1])
        .note(format!("baseline: -j {a}, the default; {how}")),
    );
    for (what, v) in [
        ("all threads stopped for the writes", &stopped),
        ("time inside ulp", &inside),
    ] {
        rows.push(
            Row::new(
                format!("fleet {n}, -j {b}: {what}, p99 over the processes"),
                Unit::Secs,
                median(&v[1]),
            )
            .baseline(median(&v[0]))
            .samples(&v[1])
            .note(format!(
                "median over the runs of each run's p99 over its processes (`-v`); baseline: the same with -j {a}; {how}"
            )),
        );
    }
    Ok(())
}

/// One row per measure of the rounds (each round the same rows in the same
/// order): the median of their values, every value as a sample.
fn medians(runs: Vec<Vec<Row>>) -> Vec<Row> {
    let rounds = runs.len();
    let mut runs = runs.into_iter();
    let Some(first) = runs.next() else {
        return Vec::new();
    };
    let rest: Vec<Vec<Row>> = runs.collect();
    first
        .into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            let values: Vec<f64> = std::iter::once(row.value)
                .chain(rest.iter().map(|r| r.get(i).and_then(|x| x.value)))
                .flatten()
                .collect();
            if rounds > 1 {
                row.value = Some(crate::report::median(&values));
                row.note = format!(
                    "median of {rounds} fleets, each started afresh; the first: {}",
                    row.note
                );
                row.samples = values;
            }
            row
        })
        .collect()
}

fn fleet_rows(
    kit: &Kit,
    n: usize,
    j: &str,
    timeout: Duration,
    procs: &mut [Proc],
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    // Fleet mode, if this ulp has it.
    let attempts: [&[&str]; 2] = [
        &["trigger", "-q", "-j", j, "--timeout", "30"],
        &["trigger", "-q", "--timeout", "30"],
    ];
    let mut fleet_args: Option<Vec<&str>> = None;
    let mut apply_ran = None;
    for a in attempts {
        let mut args = a.to_vec();
        args.push("bench_livepatch.so");
        let r = kit.ulp_for(&args, timeout)?;
        if r.code == 64 {
            continue;
        }
        fleet_args = Some(a.to_vec());
        apply_ran = Some(r);
        break;
    }
    if let (Some(a), Some(applied)) = (fleet_args, apply_ran) {
        let label = if a.contains(&"-j") {
            format!("fleet mode -j {j}")
        } else {
            "fleet mode".to_string()
        };
        verify(procs, "3", &format!("fleet {n} apply ({label})"))
            .map_err(|e| format!("{e}; ulp said: {}", applied.both().trim()))?;
        let mut apply_args = a.clone();
        apply_args.push("bench_livepatch.so");
        let mut args = a.clone();
        args.push("--revert");
        args.push("bench_livepatch.so");
        let reverted = kit.ulp_for(&args, timeout)?;
        verify(procs, "2", &format!("fleet {n} revert ({label})"))
            .map_err(|e| format!("{e}; ulp said: {}", reverted.both().trim()))?;
        for (what, r, args) in [
            ("apply all", &applied, &apply_args),
            ("revert all", &reverted, &args),
        ] {
            let mut row = Row::new(
                format!("fleet {n}: {what} ({label})"),
                Unit::Secs,
                r.elapsed.as_secs_f64(),
            )
            .note(format!(
                "`ulp {}`, exit {}, {} (counts include other processes with the runtime on the machine); {:.2} ms per process",
                args.join(" "),
                r.code,
                summary(&r.stdout),
                r.elapsed.as_secs_f64() * 1e3 / n as f64
            ));
            if let Some(t) = limit(n) {
                row = row.target(t);
            }
            rows.push(row);
        }
    } else {
        // Sequential fallback: one ulp per process.
        for (what, revert) in [("apply all", false), ("revert all", true)] {
            let t0 = Instant::now();
            for p in procs.iter() {
                kit.trigger(p.pid, revert)?;
            }
            let total = t0.elapsed().as_secs_f64();
            verify(
                procs,
                if revert { "2" } else { "3" },
                &format!("fleet {n} {what} (sequential)"),
            )?;
            let mut row = Row::new(
                format!("fleet {n}: {what} (sequential fallback)"),
                Unit::Secs,
                total,
            )
            .note(format!(
                "this ulp has no fleet mode (`ulp trigger` without -p is a usage error): one `ulp trigger -p PID` per process; {:.2} ms per process",
                total * 1e3 / n as f64
            ));
            if let Some(t) = limit(n) {
                row = row.target(t);
            }
            rows.push(row);
        }
    }
    // One ulp run over the processes named ulpb_fleet, with the default
    // per-thread transitions and switching every thread at once.
    let runs = [
        ("apply all", false, None),
        ("revert all", true, None),
        ("apply all", false, Some("--consistency=none")),
        ("revert all", true, Some("--consistency=none")),
    ];
    for (what, revert, model) in runs {
        let mut args = vec!["trigger", "-q", "-p", FLEET_NAME, "--timeout", "30"];
        if revert {
            args.push("--revert");
        }
        args.extend(model);
        args.push("bench_livepatch.so");
        let r = kit.ulp_for(&args, timeout)?;
        verify(
            procs,
            if revert { "2" } else { "3" },
            &format!("fleet {n} {what} (-p NAME)"),
        )
        .map_err(|e| format!("{e}; ulp said: {}", r.both().trim()))?;
        // -p NAME names exactly the fleet: the counts must be exact too.
        let want = format!("ulp: Processes patched: {n}, Skipped: 0, Failed: 0.");
        if summary(&r.stdout) != want || r.code != 0 {
            return Err(format!(
                "fleet {n} {what} (-p NAME): ulp exited {} with '{}', expected '{want}'",
                r.code,
                summary(&r.stdout)
            ));
        }
        let how = model.map_or(String::new(), |m| format!(", {m}"));
        rows.push(
            Row::new(
                format!("fleet {n}: {what} (one run, -p NAME{how})"),
                Unit::Secs,
                r.elapsed.as_secs_f64(),
            )
            .note(format!(
                "`ulp {}`, exit {}, {}; {:.2} ms per process",
                args.join(" "),
                r.code,
                summary(&r.stdout),
                r.elapsed.as_secs_f64() * 1e3 / n as f64
            )),
        );
    }
    Ok(())
}
