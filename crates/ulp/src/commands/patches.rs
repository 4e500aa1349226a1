//! `ulp patches`: processes with the runtime, their live-patchable
//! libraries and applied patches.

use clap::ValueHint;
use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Value};
use ulp_container::format::bug_labels;
use ulp_core::inventory::{self, Inventory};
use ulp_core::runtime::{format_utc, AppliedPatch, Runtime, RuntimeError};
use ulp_core::store::{self, Store};
use ulp_core::Pid;

use super::{hex, no_operands, print_json, process_name, resolve_processes, vanished};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "list processes with the runtime and their patches, and those still running unpatched copies of patched libraries",
    override_usage = "\
ulp patches [-p PID|NAME] [-u USER] [-b] [--only-livepatched] [--store DIR]
       ulp patches --stored [--store DIR]",
    before_help = "\
List the processes that have the live-patching runtime loaded (all of them,
or those named by -p, or owned by USER: -u takes a user name, a shell
pattern of names or a numeric uid, matched against the login uid of the
process's session, /proc/PID/loginuid), their live-patching status, their live-patchable
libraries and the patches applied to each, with the bug labels found in the
patches' comments:

  PID: <pid>, name: <name>
    Livepatching status: enabled | disabled by user | disabled (<reason>)
    Livepatchable libraries:
      in <library path>:
        livepatch: <container file name> loaded on <date, UTC>
          applied by its runtime from the patch store, at start or at dlopen
          bug labels: <labels>
(the middle line only for a patch the runtime applied itself from the patch
store).

Then, when some process still runs a library build that is patched in
other processes, or that a record of the patch store is for (--store DIR,
else $ULP_STORE, else /var/lib/ulp/patches), without having all of those
patches, one line for each,
with the reason (no runtime, opted out, disabled, not permitted, a stored
patch that is refused (its container copy fails its checks, or its runtime
refused it: the runtime's message), or simply not applied yet) and what to do (not with --only-livepatched):

  Unpatched processes (they map a library that is patched elsewhere):
    <name> (pid: <pid>): <library path>: <reason>

The processes are only read, never stopped.

--stored lists the patch store instead (--store DIR, else the directory
$ULP_STORE names, else /var/lib/ulp/patches), what `ulp trigger --persist`
recorded: each record's container copy, target library and build id, and
since when; then each corrupt record (files missing, metadata that does not
parse, or as root files another user could change) with the reason:

  Stored patches in <store>:
    <container path in the store>
      target: <library> (build id: <build id>), since <time, RFC 3339 UTC>
    corrupt: <record path>: <reason>

A store that does not exist is empty. As root, a store that another user
could change is refused.",
    after_help = "\
Exit status: 0; with --stored, 1 when the store cannot be read (not when it
does not exist) or is refused; 1 when -p names no readable process or one without the
runtime (`[time] ulp: error gathering target process information: Libpulp
not found in target process` on stderr), or a process's runtime cannot be
read.",
    mut_arg("json", |a| a.help("one JSON document instead (see README.md)"))
)]
pub struct Args {
    /// only this process (or every process named NAME)
    #[arg(short, long, value_name = "PID|NAME")]
    pub process: Option<String>,
    /// only processes owned by USER (name, pattern, uid)
    #[arg(short, long, value_name = "USER", value_hint = ValueHint::Username)]
    pub user: Option<String>,
    /// show each library's build id: in <path> (<build id>):
    #[arg(short = 'b', long)]
    pub buildid: bool,
    /// show only libraries with applied patches, and only processes that have some
    #[arg(long)]
    pub only_livepatched: bool,
    /// list the patch store's records (ulp trigger --persist) instead of processes
    #[arg(long)]
    pub stored: bool,
    /// the patch store (default: $ULP_STORE, else /var/lib/ulp/patches): its records count in the unpatched list
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub store: Option<String>,
    #[arg(value_hint = ValueHint::Other, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

fn runtime_processes(p: &Args) -> Vec<Pid> {
    inventory::runtime_processes(p.process.as_deref(), p.user.as_deref())
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    no_operands("patches", &p.operands)?;
    if p.store.as_deref() == Some("") {
        return Err(UsageError("--store needs a directory".into()));
    }
    if p.stored {
        if p.process.is_some() || p.user.is_some() || p.only_livepatched {
            return Err(UsageError(
                "--stored lists the patch store: -p, -u and --only-livepatched do not go with it"
                    .into(),
            ));
        }
        return Ok(stored(p));
    }
    let json = p.common.json;
    let only_patched = p.only_livepatched;
    // Listing every process (or every one of a name): one that exits
    // meanwhile is simply gone.
    let all = !matches!(p.process.as_deref(), Some(s) if s.parse::<Pid>().is_ok());
    let pids = runtime_processes(p);
    if pids.is_empty() {
        if let Some(spec) = p.process.as_deref() {
            let msg = match p.user.as_deref() {
                Some(user) => format!("no readable process matches '{spec}' owned by '{user}'"),
                None => format!("no readable process matches '{spec}'"),
            };
            eprintln!("ulp: {msg}");
            if json {
                print_json(
                    &json!({ "processes": [], "warnings": [], "errors": [{ "error": msg }] }),
                );
            }
            return Ok(1);
        }
    }
    let mut status = 0;
    let (mut reports, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for pid in pids {
        let name = process_name(pid);
        let rt = match Runtime::find_started(pid).0 {
            Ok(rt) => rt,
            Err(RuntimeError::NotLoaded) if !all => {
                // libpulp's words; a process named by -p without the
                // runtime fails the run (exit 1), as in libpulp.
                let e = RuntimeError::NotLoaded;
                if !p.common.quiet {
                    super::log_stderr(&format!(
                        "error gathering target process information: {}",
                        ulp_abi::errors::ENOLIBPULP.phrase
                    ));
                }
                warnings.push(json!({ "pid": pid.get(), "name": name, "warning": e.to_string() }));
                status = 1;
                continue;
            }
            Err(RuntimeError::NotLoaded) => continue,
            Err(RuntimeError::Process(e)) if all && vanished(pid, &e) => continue,
            Err(e) => {
                eprintln!("ulp: {name} (pid: {pid}): {e}");
                errors.push(json!({ "pid": pid.get(), "name": name, "error": e.to_string() }));
                status = 1;
                continue;
            }
        };
        match inventory::of(pid, &rt) {
            Ok(mut r) => {
                if only_patched {
                    r.libraries.retain(|l| !l.patches.is_empty());
                    if r.libraries.is_empty() {
                        continue;
                    }
                }
                if !json {
                    print!("{}", text(&r, p.buildid));
                }
                reports.push(r);
            }
            Err(e) if all && vanished(pid, &e) => continue,
            Err(e) => {
                eprintln!("ulp: {name} (pid: {pid}): {e}");
                errors.push(json!({ "pid": pid.get(), "name": name, "error": e.to_string() }));
                status = 1;
            }
        }
    }
    let candidates = match p.process.as_deref() {
        Some(spec) => resolve_processes(spec),
        None => ulp_process::all_pids(),
    };
    // --only-livepatched asks about patched processes alone.
    let coverage = if only_patched {
        Default::default()
    } else {
        ulp_core::coverage::scan(&candidates, &stored_patches(p.store.as_deref()))
    };
    if json {
        let processes: Vec<Value> = reports.iter().map(to_json).collect();
        let unpatched: Vec<Value> = coverage
            .unpatched
            .iter()
            .map(|u| {
                json!({
                    "pid": u.pid.get(),
                    "name": u.name,
                    "library": u.library,
                    "build_id": hex(&u.build_id),
                    "reason": u.why.key(),
                    "message": u.why.to_string(),
                })
            })
            .collect();
        print_json(&json!({
            "processes": processes,
            "unpatched": unpatched,
            "unreadable_processes": coverage.unreadable,
            "warnings": warnings,
            "errors": errors,
        }));
    } else if !coverage.unpatched.is_empty() && !only_patched {
        println!("Unpatched processes (they map a library that is patched elsewhere):");
        for u in &coverage.unpatched {
            println!("  {} (pid: {}): {}: {}", u.name, u.pid, u.library, u.why);
        }
        if coverage.unreadable > 0 {
            let advice = if ulp_core::trust::running_as_root() {
                ""
            } else {
                ": run ulp as root to see them all"
            };
            println!(
                "  ({} other processes could not be read{advice})",
                coverage.unreadable
            );
        }
    }
    Ok(status)
}

/// `--stored`: the records of the patch store.
/// The patch store's records, for the unpatched list (a store that is
/// missing, unreadable or refused counts as empty here: `--stored` says
/// why).
fn stored_patches(dir: Option<&str>) -> Vec<ulp_core::coverage::StoredPatch> {
    let Ok(listing) = Store::new(store::resolve(dir)).list() else {
        return Vec::new();
    };
    listing
        .records
        .into_iter()
        .filter_map(|s| {
            let refused = ulp_container::container::read(&s.container_path())
                .err()
                .map(|e| format!("its container copy: {e}"));
            let r = s.record;
            Some(ulp_core::coverage::StoredPatch {
                refused,
                target: r.target,
                build_id: unhex(&r.build_id)?,
                patch_id: unhex(&r.patch_id)?.try_into().ok()?,
                container: r.container,
            })
        })
        .collect()
}

/// Bytes from hex text; `None` when it is not.
fn unhex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = core::str::from_utf8(pair).ok().filter(|p| p.len() == 2)?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

fn stored(p: &Args) -> u8 {
    let store = Store::new(store::resolve(p.store.as_deref()));
    let dir = store.dir.display().to_string();
    let listing = match store.list() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ulp: {e}");
            if p.common.json {
                print_json(&json!({
                    "store": dir,
                    "records": [],
                    "corrupt": [],
                    "errors": [{ "error": e.to_string() }],
                }));
            }
            return 1;
        }
    };
    if p.common.json {
        let records: Vec<Value> = listing
            .records
            .iter()
            .map(|s| {
                // The record's metadata as stored, less its format number,
                // and where the record and its container copy are.
                let mut v = s.record.to_json();
                if let Value::Object(m) = &mut v {
                    m.remove("format");
                    m.insert("path".into(), json!(s.container_path()));
                    m.insert("record".into(), json!(s.dir));
                }
                v
            })
            .collect();
        let corrupt: Vec<Value> = listing
            .corrupt
            .iter()
            .map(|c| json!({ "path": c.path, "reason": c.reason }))
            .collect();
        print_json(&json!({
            "store": dir,
            "records": records,
            "corrupt": corrupt,
            "errors": [],
        }));
        return 0;
    }
    if listing.records.is_empty() && listing.corrupt.is_empty() {
        println!("No stored patches in {dir}.");
        return 0;
    }
    let mut s = String::new();
    let _ = writeln!(s, "Stored patches in {dir}:");
    for r in &listing.records {
        let _ = writeln!(s, "  {}", r.container_path().display());
        let _ = writeln!(
            s,
            "    target: {} (build id: {}), since {}",
            r.record.target, r.record.build_id, r.record.recorded_at
        );
    }
    for c in &listing.corrupt {
        let _ = writeln!(s, "  corrupt: {}: {}", c.path.display(), c.reason);
    }
    print!("{s}");
    0
}

fn container_file(a: &AppliedPatch) -> String {
    Path::new(&a.container_path).file_name().map_or_else(
        || a.container_path.clone(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// The `patches` block of one process (COMPAT.md, "Output of patches").
fn text(r: &Inventory, build_ids: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "PID: {}, name: {}", r.pid, r.name);
    let _ = writeln!(s, "  Livepatching status: {}", r.state);
    if let Some((threads, count)) = &r.pending_threads {
        let _ = writeln!(
            s,
            "  transition pending: {} (they take the new code when they leave the replaced \
             functions)",
            ulp_core::transition::describe_pending(threads, *count)
        );
    } else if r.in_transition {
        let _ = writeln!(
            s,
            "  Transition: every thread runs the new code; the next `ulp trigger` on this \
             process removes the per-thread dispatch"
        );
    } else if r.writes_pending {
        // Not in libpulp's output: only ever printed after a killed ulp.
        let _ = writeln!(
            s,
            "  Interrupted: a killed ulp left code writes unfinished; the patches below are \
             recorded but may not all be in the code yet (any `ulp trigger` on this process \
             completes them)"
        );
    }
    let _ = writeln!(s, "  Livepatchable libraries:");
    for lib in &r.libraries {
        if build_ids {
            let id = lib.build_id.as_deref().map_or("no build id".into(), hex);
            let _ = writeln!(s, "    in {} ({id}):", lib.path);
        } else {
            let _ = writeln!(s, "    in {}:", lib.path);
        }
        for a in &lib.patches {
            let _ = writeln!(
                s,
                "      livepatch: {} loaded on {}",
                container_file(a),
                format_utc(a.applied_at)
            );
            if a.at_start {
                let _ = writeln!(
                    s,
                    "        applied by its runtime from the patch store, at start or at dlopen"
                );
            }
            let labels = bug_labels(&a.comments);
            if !labels.is_empty() {
                let _ = writeln!(s, "        bug labels: {}", labels.join(", "));
            }
        }
    }
    s
}

fn to_json(r: &Inventory) -> Value {
    let libraries: Vec<Value> = r
        .libraries
        .iter()
        .map(|lib| {
            let patches: Vec<Value> = lib
                .patches
                .iter()
                .map(|a| {
                    json!({
                        "container": container_file(a),
                        "container_path": a.container_path,
                        "patch_id": hex(&a.patch_id),
                        "applied_at": a.applied_at,
                        "applied_at_utc": format_utc(a.applied_at),
                        "bug_labels": bug_labels(&a.comments),
                        "applied_at_start": a.at_start,
                        "comments": a.comments,
                    })
                })
                .collect();
            json!({
                "path": lib.path,
                "build_id": lib.build_id.as_deref().map(hex),
                "livepatchable": lib.livepatchable,
                "patches": patches,
            })
        })
        .collect();
    json!({
        "pid": r.pid.get(),
        "name": r.name,
        "status": r.state.to_string(),
        "state": r.state.key(),
        "writes_pending": r.writes_pending,
        "transition_pending": r.pending_threads.as_ref().map(|(threads, count)| json!({
            "count": count,
            "threads": threads.iter().map(|(t, f)| json!({ "tid": t.get(), "in": f })).collect::<Vec<_>>(),
        })),
        "libraries": libraries,
    })
}
