//! `ulp watch`: apply the patch store's records to processes as they start.

use clap::ValueHint;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use ulp_core::store::{self, Store};
use ulp_core::watch::{self, Config, Event};

use super::no_operands;
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "apply the patch store's records to processes as they start (a service)",
    override_usage = "\
ulp watch [--store DIR] [--poll] [--runtime=PATH] [--timeout S] [-p NAME]",
    before_help = "\
Run until SIGTERM or SIGINT, applying the records of the patch store (what
`ulp trigger --persist` recorded: --store DIR, else the directory $ULP_STORE
names, else /var/lib/ulp/patches) to every process that starts a program
mapping a library build a record is for, right after its dynamic loader has
mapped its libraries. A process without the runtime gets it loaded first,
as with `ulp trigger --load-runtime -p PID` (--runtime=PATH, by default
libpulp.so.0 next to ulp as for trigger; as root, one another user could
change is refused); a process whose environment opts out
(LIBPULP_DISABLE_ON_*) is refused. Processes that were running before watch
started are left to `ulp trigger`. -p NAME limits watch to the processes
whose name or executable's file name matches the shell pattern NAME (quote
it: -p 'nginx*'; as for trigger).

New processes are learnt of from the kernel's process events (netlink; this
needs root), else, or with --poll, by reading the process list every 10 ms.
A new process is only read (/proc/PID/maps and the build ids of the files it
maps) until it is known to map a recorded target: a process that maps none
is never stopped, traced or slowed. One that does is tried again while it is
busy (a thread still in the loader or the C library), for at most --timeout
seconds (default 2), then refused with the reason.

The store is read again whenever it changes, so records added or removed
while watch runs take effect for the processes started after. As root, a
store that another user could change is refused (nothing is applied until it
is fixed), and so is every record whose files are not root's or are writable
by group or others; a corrupt record (metadata or container) is reported and
never applied. A library a process opens later with dlopen is not watched.

Log, on stderr (the journal under systemd), one line each:
  ulp watch: watching STORE (SOURCE)
  ulp watch: store: N records: TARGET: FILE, ...
  ulp watch: patched PID (NAME): TARGET: FILE
  ulp watch: refused PID (NAME): TARGET: FILE: REASON
  ulp watch: refused record DIR: REASON
A process that maps no recorded target is not logged; one that exits before
it is patched gets one line (`exited`).",
    after_help = "\
Exit status: 0 after SIGTERM or SIGINT (the process in hand is finished
first); 1 when the runtime cannot be used; 64 on a usage error.
The Debian package ships ulp-watch.service (not enabled): systemctl enable
--now ulp-watch.",
    mut_arg("quiet", |a| a.help("log only refusals")),
    mut_arg("verbose", |a| a.help("also log records found already applied")),
    mut_arg("json", |a| a.help("log one JSON object a line instead (\"event\", \"pid\", \"name\", \"target\", \"file\", \"reason\", ...)"))
)]
pub struct Args {
    /// the patch store (default: $ULP_STORE, else /var/lib/ulp/patches)
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub store: Option<String>,
    /// read the process list every 10 ms instead of the kernel's process events
    #[arg(long)]
    pub poll: bool,
    /// the runtime loaded into processes that lack it (default: libpulp.so.0 next to ulp)
    #[arg(long, value_name = "PATH", value_hint = ValueHint::AnyPath)]
    pub runtime: Option<String>,
    /// only processes whose name matches the shell pattern NAME
    #[arg(short, long, value_name = "NAME")]
    pub process: Option<String>,
    /// give up on a busy process after S seconds (default 2)
    #[arg(long, value_name = "S", value_hint = ValueHint::Other)]
    pub timeout: Option<String>,
    #[arg(value_hint = ValueHint::Other, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Set by SIGTERM and SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGTERM and SIGINT set [`STOP`] (without SA_RESTART, so that a wait is
/// cut short).
fn catch_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic; the sigaction is
        // fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    no_operands("watch", &p.operands)?;
    if p.store.as_deref() == Some("") {
        return Err(UsageError("--store needs a directory".into()));
    }
    let mut per_process = Duration::from_secs(2);
    if let Some(t) = p.timeout.as_deref() {
        per_process = super::timeout_seconds(t)?;
    }
    let load = super::LoadRuntime {
        load_runtime: true,
        runtime: p.runtime.clone(),
    };
    let runtime = match super::runtime_to_load(&load, false)? {
        Some(Ok(file)) => file,
        Some(Err(e)) => {
            eprintln!("ulp watch: {e}");
            return Ok(1);
        }
        None => return Ok(1),
    };
    let mut config = Config::new(Store::new(store::resolve(p.store.as_deref())), runtime);
    config.poll = p.poll;
    if p.process.as_deref() == Some("") {
        return Err(UsageError("-p needs a process name pattern".into()));
    }
    config.only = p.process.clone();
    config.per_process = per_process;
    let (json, quiet, verbose) = (p.common.json, p.common.quiet, p.common.verbose);
    catch_signals();
    let emit = |e: Event| {
        let refusal = matches!(
            e,
            Event::Refused { .. } | Event::RecordRefused { .. } | Event::StoreRefused { .. }
        );
        if quiet && !refusal {
            return;
        }
        if !verbose && matches!(e, Event::AlreadyApplied { .. }) {
            return;
        }
        if json {
            eprintln!("{}", to_json(&e));
        } else {
            eprintln!("ulp watch: {}", line(&e));
        }
    };
    watch::run(&config, &STOP, &emit);
    Ok(0)
}

/// One log line (after `ulp watch: `).
fn line(e: &Event) -> String {
    match e {
        Event::Started {
            store,
            source,
            fallback,
        } => match fallback {
            Some(why) if !ulp_core::trust::running_as_root() => format!(
                "watching {} ({source}: {why}; as root it listens to them)",
                store.display()
            ),
            Some(why) => format!("watching {} ({source}: {why})", store.display()),
            None => format!("watching {} ({source})", store.display()),
        },
        Event::StoreRead { records } => {
            let list: Vec<String> = records.iter().map(|(t, f)| format!("{t}: {f}")).collect();
            match list.len() {
                0 => "store: no records".to_string(),
                1 => format!("store: 1 record: {}", list[0]),
                n => format!("store: {n} records: {}", list.join(", ")),
            }
        }
        Event::StoreRefused { reason } => format!("store refused: {reason}"),
        Event::RecordRefused { path, reason } => {
            format!("refused record {}: {reason}", path.display())
        }
        Event::EventsLost => {
            "process events were lost (too many at once): looking at every process".to_string()
        }
        Event::Patched {
            pid,
            name,
            target,
            file,
        } => format!("patched {pid} ({name}): {target}: {file}"),
        Event::AlreadyApplied {
            pid,
            name,
            target,
            file,
        } => format!("already applied {pid} ({name}): {target}: {file}"),
        Event::Refused {
            pid,
            name,
            target,
            file,
            reason,
        } => format!("refused {pid} ({name}): {target}: {file}: {reason}"),
        Event::Exited { pid, name } => format!("exited {pid} ({name}) before it was patched"),
    }
}

fn to_json(e: &Event) -> serde_json::Value {
    match e {
        Event::Started {
            store,
            source,
            fallback,
        } => json!({"event": "started", "store": store, "source": source, "fallback": fallback}),
        Event::StoreRead { records } => json!({
            "event": "store",
            "records": records.iter().map(|(t, f)| json!({"target": t, "file": f})).collect::<Vec<_>>(),
        }),
        Event::StoreRefused { reason } => json!({"event": "store_refused", "reason": reason}),
        Event::RecordRefused { path, reason } => {
            json!({"event": "record_refused", "record": path, "reason": reason})
        }
        Event::EventsLost => json!({"event": "events_lost"}),
        Event::Patched {
            pid,
            name,
            target,
            file,
        } => {
            json!({"event": "patched", "pid": pid.get(), "name": name, "target": target, "file": file})
        }
        Event::AlreadyApplied {
            pid,
            name,
            target,
            file,
        } => {
            json!({"event": "already_applied", "pid": pid.get(), "name": name, "target": target, "file": file})
        }
        Event::Refused {
            pid,
            name,
            target,
            file,
            reason,
        } => {
            json!({"event": "refused", "pid": pid.get(), "name": name, "target": target, "file": file, "reason": reason})
        }
        Event::Exited { pid, name } => json!({"event": "exited", "pid": pid.get(), "name": name}),
    }
}
