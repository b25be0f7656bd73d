//! The reference server: `cargo run --release --example reference_server`. Configuration
//! comes from the environment or `--flags` (`docs/reference-server.md`).
fn main() -> std::process::ExitCode {
    reference_server::main()
}
