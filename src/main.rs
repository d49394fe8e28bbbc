//! `weft`: the one binary of the weft vision-language pretraining framework. Its commands are
//! the `weft-cli` crate's (`crates/weft-cli/src/commands/`).

#![warn(missing_docs)]

fn main() -> std::process::ExitCode {
    weft_cli::main()
}
