//! The `ulp` command: parse the arguments, call the libraries, print.
//! Results go to stdout; warnings and errors go to stderr. A usage error
//! exits 64. Everything a daemon would also need lives in `ulp-core`,
//! `ulp-container`, `ulp-elf` and `ulp-process`.

mod args;
mod commands;

use std::process::ExitCode;

use args::{flag, value, Spec, UsageError};

/// Every option of every command (each command checks it got only its own).
const SPECS: &[Spec] = &[
    flag(Some('h'), "help"),
    flag(Some('V'), "version"),
    flag(Some('v'), "verbose"),
    flag(Some('q'), "quiet"),
    flag(None, "json"),
    value(Some('p'), "process"),
    value(Some('u'), "user"),
    value(Some('j'), "jobs"),
    flag(None, "revert"),
    value(Some('r'), "retries"),
    value(None, "timeout"),
    flag(Some('b'), "buildid"),
    value(Some('l'), "livepatch"),
    value(Some('t'), "target"),
    value(None, "revert-all"),
    value(Some('R'), "root"),
    flag(None, "disable-seccomp"),
    flag(None, "force"),
    flag(None, "load-runtime"),
    value(None, "runtime"),
    flag(None, "only-livepatched"),
    value(Some('o'), "output"),
    flag(None, "functions"),
];

pub const EX_USAGE: u8 = 64;

const USAGE: &str = "\
ulp: userspace live patching (a drop-in replacement for libpulp's ulp)

Usage: ulp COMMAND [OPTIONS] [ARGS]   (the command word may stand anywhere)

Patching running processes (run with libpulp.so.0 preloaded, or loaded
into them with --load-runtime):
  trigger [-p PID|NAME] [-j N] [--revert] [--revert-all=LIB] [-r N] [--timeout S]
          [-R PREFIX] [--disable-seccomp] [--force] [--load-runtime [--runtime PATH]]
          [FILE|'GLOB']...
                      apply (or revert) live-patch containers (without -p:
                      in every process that has the runtime loaded)
  patches [-p PID|NAME] [-u USER] [-b] [--only-livepatched]
                      list processes with the runtime and their patches, and
                      those still running unpatched copies of patched libraries
  messages -p PID|NAME
                      print a process's runtime message log
  check -p PID|NAME FILE
                      is the patch applied? (exit 1 yes, 0 no, 255 error)
  set_patchable [-p PID|NAME] [-u USER] enable|disable
                      switch live patching on or off in running processes

Building live patches:
  post FILE           merge the entry NOPs of a library built with
                      -fpatchable-function-entry=16,14 (in place)
  livepatchable FILE  tell whether FILE has patchable function entries
  packer [-l FILE] [-t FILE] [--force] FILE.dsc
                      write the patch metadata into the container
  dump [--revert] [-b] FILE
                      print a container's metadata
  extract [-o FILE] LIB
                      describe LIB (name, build id, symbols) as JSON, for
                      packing without the library (`@LIB.json` in a .dsc)

Options for every command:
  -v, --verbose       say more    -q, --quiet   say less
      --json          print one JSON document on stdout (see README)
  -h, --help          this help (or `ulp COMMAND --help`)
  -V, --version       print the version

Exit status: 0 success, 1 failure (a failed trigger: libpulp's error number,
masked to 8 bits), 64 usage error (see `ulp COMMAND --help`).
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args::parse(&argv, &commands::names(), SPECS) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    if parsed.has("version") && !parsed.has("help") {
        if parsed.has("json") {
            commands::print_json(&serde_json::json!({
                "name": "ulp",
                "version": env!("CARGO_PKG_VERSION"),
                "protocol_version": ulp_abi::PROTOCOL_VERSION,
            }));
        } else {
            println!("ulp {}", env!("CARGO_PKG_VERSION"));
        }
        return ExitCode::SUCCESS;
    }
    let Some(command) = parsed.command.clone() else {
        if parsed.has("help") {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        return usage_error(&UsageError(match parsed.operands.first() {
            Some(w) => format!("unknown command '{w}'"),
            None => "no command given".into(),
        }));
    };
    if parsed.has("help") {
        print!("{}", commands::help(&command));
        return ExitCode::SUCCESS;
    }
    match commands::run(&command, &parsed) {
        Ok(code) => ExitCode::from(code),
        Err(e) => usage_error(&e),
    }
}

fn usage_error(e: &UsageError) -> ExitCode {
    eprintln!("ulp: {e}");
    eprintln!("Try 'ulp --help' for more information.");
    ExitCode::from(EX_USAGE)
}
