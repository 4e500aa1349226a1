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
use crate::procs::{kill_all, Proc};
use crate::report::{Row, Target, Unit};
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
