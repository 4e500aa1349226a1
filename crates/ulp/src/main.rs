//! The `ulp` command: parse the arguments, call the libraries, print.
//! Results go to stdout; warnings and errors go to stderr. A usage error
//! exits 64. Everything a daemon would also need lives in `ulp-core`,
//! `ulp-container`, `ulp-elf` and `ulp-process`.

mod args;
mod commands;
mod completion;

use std::process::ExitCode;

use args::UsageError;

pub const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // The bash completion, generated from the same definition (the install
    // script writes it; it is not an option of any command).
    if argv == ["--bash-completion"] {
        print!("{}", completion::bash(&commands::definition()));
        return ExitCode::SUCCESS;
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
            }));
        } else {
            println!("ulp {}", env!("CARGO_PKG_VERSION"));
        }
        return ExitCode::SUCCESS;
    }
    let Some(command) = parsed.command.clone() else {
        if parsed.has("help") {
            print!("{}", commands::help(commands::definition(), None));
            return ExitCode::SUCCESS;
        }
        return usage_error(&UsageError(match parsed.operands.first() {
            Some(w) => format!("unknown command '{w}'"),
            None => "no command given".into(),
        }));
    };
    if parsed.has("help") {
        print!("{}", commands::help(commands::definition(), Some(&command)));
        return ExitCode::SUCCESS;
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
        Ok(code) => ExitCode::from(code),
        Err(e) => usage_error(&e),
    }
}

fn usage_error(e: &UsageError) -> ExitCode {
    eprintln!("ulp: {e}");
    eprintln!("Try 'ulp --help' for more information.");
    ExitCode::from(EX_USAGE)
}
