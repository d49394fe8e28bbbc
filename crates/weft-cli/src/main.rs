//! `weft`: the one binary of the weft vision-language pretraining framework. Its commands are
//! this crate's library (`src/commands/`).

fn main() -> std::process::ExitCode {
    weft_cli::main()
}
