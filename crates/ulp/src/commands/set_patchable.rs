//! `ulp set_patchable`: switch live patching off or on in running
//! processes (the runtime's state word, written through process memory).

use clap::ValueHint;
use serde_json::json;
use ulp_core::live_patching;
use ulp_core::runtime::{Runtime, RuntimeError};
use ulp_core::Pid;

use super::{
    log_stderr, print_json, process_name, resolve_processes, runtime_to_load, vanished, LoadRuntime,
};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "switch live patching on or off in running processes",
    override_usage = "\
ulp set_patchable [-p PID|NAME] [-u USER] enable|disable
       ulp set_patchable [-p PID|NAME] [-u USER] --load-runtime [--runtime PATH] enable",
    before_help = "\
Switch live patching off (disable) or back on (enable) in the process PID,
in every process named NAME, or without -p in every process that has the
runtime loaded; -u keeps only the processes whose owner is USER (a user
name, a shell pattern of names, or a numeric uid; the owner is the login
uid of the process's session, /proc/PID/loginuid, named through
/etc/passwd). A disabled process refuses every patch (`ulp trigger`
reports it SKIPPED) until it is enabled again; patches already applied
stay applied. `ulp patches` shows the process as `disabled by user`. The
process is not stopped.

`enable` does not override the user's opt-out: a process started with a
matching LIBPULP_DISABLE_ON_PATH, _USERS or _GROUPS stays disabled, and
enabling it is reported as a failure. Disabling it changes nothing.

Output, on stderr (as libpulp's; not with -q), one line per process that
changed:
  [YYYY-MM-DD HH:MM:SS] ulp: Process NAME (pid: PID): livepatching is now disabled.
(or `enabled`); a process already in the asked state gets `... livepatching
is already disabled.`

A process without the runtime gets a warning (it cannot be patched
anyway), unless `enable --load-runtime` loads the runtime into it (as
`ulp trigger --load-runtime` does, see its help): it is then patchable
from now on (`... libpulp.so.0 loaded.`, then `livepatching is now
enabled.`). A process whose environment opts out is not loaded into.
--force: as root, load a runtime file another user could change.",
    after_help = "\
Exit status: 0 when every process with the runtime is in the asked state;
1 otherwise (no such process, enabling a process disabled by user, an
error), or when no matching process has the runtime."
)]
pub struct Args {
    /// the process(es) (default: all with the runtime)
    #[arg(short, long, value_name = "PID|NAME")]
    pub process: Option<String>,
    /// only processes owned by USER (name, pattern, uid)
    #[arg(short, long, value_name = "USER", value_hint = ValueHint::Username)]
    pub user: Option<String>,
    #[command(flatten)]
    pub load: LoadRuntime,
    /// as root, load a runtime file another user could change
    #[arg(long)]
    pub force: bool,
    #[arg(value_name = "enable|disable", hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let spec = p.process.as_deref();
    let user = p.user.as_deref();
    let enable = match p.operands.as_slice() {
        [w] if w == "enable" => true,
        [w] if w == "disable" => false,
        [] => {
            return Err(UsageError(
                "'set_patchable' needs 'enable' or 'disable'".into(),
            ))
        }
        [w] => {
            return Err(UsageError(format!(
                "'set_patchable' takes 'enable' or 'disable', got '{w}'"
            )))
        }
        _ => {
            return Err(UsageError(
                "'set_patchable' takes one word: 'enable' or 'disable'".into(),
            ))
        }
    };
    let action = if enable { "enable" } else { "disable" };
    if p.load.load_runtime && !enable {
        return Err(UsageError(
            "--load-runtime goes with 'enable' (a process without the runtime is not patchable \
             anyway)"
                .into(),
        ));
    }
    let load = match runtime_to_load(&p.load, p.force)? {
        Some(Err(e)) => {
            eprintln!("ulp: {e}");
            if p.common.json {
                print_json(&json!({ "error": e }));
            }
            return Ok(1);
        }
        Some(Ok(file)) => Some(file),
        None => None,
    };
    let json = p.common.json;
    let quiet = p.common.quiet;
    let mut pids = match spec {
        Some(spec) => resolve_processes(spec),
        None => ulp_core::select::with_runtime(),
    };
    if let Some(user) = user {
        pids.retain(|&pid| ulp_core::select::owner_matches(pid, user));
    }
    let by_name = spec.is_none_or(|s| s.parse::<Pid>().is_err());
    let (mut done, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    if pids.is_empty() {
        let msg = ulp_core::select::NoProcess { spec, user }.to_string();
        eprintln!("ulp: {msg}");
        errors.push(json!({ "error": msg }));
    }
    for pid in pids {
        let name = process_name(pid);
        let mut loaded = false;
        let found = match (Runtime::find_started(pid).0, &load) {
            (Err(RuntimeError::NotLoaded), Some(file)) => {
                let opts = ulp_core::trigger::Options::default();
                match ulp_core::inject::ensure_runtime(pid, file, &opts) {
                    Ok(rt) => {
                        loaded = true;
                        Ok(rt)
                    }
                    Err(outcome) => {
                        let e = outcome.to_string();
                        eprintln!("ulp: {name} (pid: {pid}): cannot load the runtime: {e}");
                        errors.push(json!({ "pid": pid.get(), "name": name, "error": e }));
                        continue;
                    }
                }
            }
            (found, _) => found,
        };
        let rt = match found {
            Ok(rt) => rt,
            Err(RuntimeError::Process(e)) if by_name && vanished(pid, &e) => continue,
            Err(e @ RuntimeError::NotLoaded) => {
                eprintln!("ulp: warning: {name} (pid: {pid}): {e}");
                warnings.push(json!({ "pid": pid.get(), "name": name, "warning": e.to_string() }));
                continue;
            }
            Err(e) => {
                eprintln!("ulp: {name} (pid: {pid}): cannot {action} live patching: {e}");
                errors.push(json!({ "pid": pid.get(), "name": name, "error": e.to_string() }));
                continue;
            }
        };
        match live_patching::set(&rt, enable) {
            Ok(change) => {
                if !quiet && !json {
                    // libpulp's line (on stderr, as its WARN); ulp's own
                    // lines in the same form for what libpulp leaves unsaid.
                    let head = format!("Process {name} (pid: {pid})");
                    if loaded {
                        log_stderr(&format!("{head}: libpulp.so.0 loaded."));
                    }
                    let now = if change.changed() || loaded {
                        "now"
                    } else {
                        "already"
                    };
                    log_stderr(&format!("{head}: livepatching is {now} {action}d."));
                }
                done.push(json!({
                    "pid": pid.get(),
                    "name": name,
                    "changed": change.changed() || loaded,
                    "runtime_loaded": loaded,
                    "before": change.before.key(),
                    "after": change.after.key(),
                    "status": change.after.to_string(),
                }));
            }
            Err(e) => {
                eprintln!("ulp: {name} (pid: {pid}): cannot {action} live patching: {e}");
                errors.push(json!({ "pid": pid.get(), "name": name, "error": e.to_string() }));
            }
        }
    }
    if json {
        print_json(&json!({
            "action": action,
            "processes": done,
            "warnings": warnings,
            "errors": errors,
        }));
    }
    // A process without the runtime is a warning, unless no process at all
    // was switched.
    Ok(if errors.is_empty() && !done.is_empty() {
        0
    } else {
        1
    })
}
