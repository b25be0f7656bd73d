//! The flaky pricing upstream (also `cargo run --example pricing_upstream`).
fn main() -> std::process::ExitCode {
    reference_server::upstream::main()
}
