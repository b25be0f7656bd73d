//! The reference server (also `cargo run --example reference_server`).
fn main() -> std::process::ExitCode {
    reference_server::main()
}
