//! The `ulp` command: parse the arguments, call the libraries, print.
//! Results go to stdout; warnings and errors go to stderr. A usage error
//! exits 64. Everything a daemon would also need lives in `ulp-core`,
//! `ulp-container`, `ulp-elf` and `ulp-process`.
//!
//! The C `main` is ours (`no_main`): std's own start reads the main
//! thread's stack bounds from /proc/self/maps and sets up a stack-overflow
//! handler, which costs more than most commands' own work (every `ulp
//! trigger` pays its start). What of it ulp relies on is done here:
//! SIGPIPE ignored (a closed pipe is an error to report, not a death in
//! the middle of a change), fds 0-2 kept open, stdout flushed at the end.
//! It also blocks SIGCHLD in every thread (see `start`).

// (A test build keeps libtest's own main.)
#![cfg_attr(not(test), no_main)]

mod args;
mod commands;
mod completion;

use args::UsageError;

pub const EX_USAGE: u8 = 64;

/// The process's entry from the C library's start (see the module
/// documentation). `std::env::args` works without std's start on glibc.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    start();
    let code = run();
    // std's start would flush stdout at exit; a failed flush (a closed
    // pipe) changes nothing: the command's work is done.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code.into()
}

/// The part of std's process start that ulp needs.
#[cfg_attr(test, allow(dead_code))]
fn start() {
    // SIGCHLD blocked in every thread (before any other exists, so they
    // inherit it): a thread that waits for the threads it traces sleeps
    // until one (ARCHITECTURE.md, "Waiting without a CPU"); another
    // thread with it unblocked would take it and drop it.
    ulp_process::block_reports();
    // SAFETY: plain libc calls on this process's own state, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // A command started with fd 0, 1 or 2 closed would otherwise give
        // that number to the first file it opens, and print into it.
        let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        });
        if libc::poll(fds.as_mut_ptr(), 3, 0) >= 0 {
            for f in fds.iter().filter(|f| f.revents & libc::POLLNVAL != 0) {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != f.fd {
                    libc::dup2(null, f.fd);
                    libc::close(null);
                }
            }
        }
    }
}

#[cfg_attr(test, allow(dead_code))]
fn run() -> u8 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // The bash completion, generated from the same definition (the install
    // script writes it; it is not an option of any command).
    if argv == ["--bash-completion"] {
        print!("{}", completion::bash(&commands::definition()));
        return 0;
    }
    let parsed = match args::scan(&argv, commands::NAMES, &args::all_specs()) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    if parsed.has("version") && !parsed.has("help") {
        if parsed.has("json") {
            commands::print_json(&serde_json::json!({
                "name": "ulp",
                "version": env!("CARGO_PKG_VERSION"),
                "protocol_version": ulp_abi::PROTOCOL_VERSION,
                "oldest_protocol_read": ulp_abi::OLDEST_PROTOCOL_READ,
            }));
        } else {
            println!("ulp {}", env!("CARGO_PKG_VERSION"));
        }
        return 0;
    }
    let Some(command) = parsed.command.clone() else {
        if parsed.has("help") {
            print!("{}", commands::help(commands::definition(), None));
            return 0;
        }
        return usage_error(&UsageError(match parsed.operands.first() {
            Some(w) => format!("unknown command '{w}'"),
            None => "no command given".into(),
        }));
    };
    if parsed.has("help") {
        print!("{}", commands::help(commands::definition(), Some(&command)));
        return 0;
    }
    // Only this command's part of the definition: building all of it
    // costs more than most commands' own work.
    let Some(definition) = commands::definition_of(&command) else {
        return usage_error(&UsageError(format!("unknown command '{command}'")));
    };
    match commands::run(
        definition,
        &command,
        &parsed,
        args::for_clap(&argv, &parsed),
    ) {
        Ok(code) => code,
        Err(e) => usage_error(&e),
    }
}

fn usage_error(e: &UsageError) -> u8 {
    eprintln!("ulp: {e}");
    eprintln!("Try 'ulp --help' for more information.");
    EX_USAGE
}
