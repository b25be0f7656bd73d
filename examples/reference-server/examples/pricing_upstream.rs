//! The flaky pricing upstream the price route calls: `cargo run --example pricing_upstream`
//! (`FAIL_RATE`, `DELAY_MS`, `LISTEN`; see `reference_server::upstream`).
fn main() -> std::process::ExitCode {
    reference_server::upstream::main()
}
