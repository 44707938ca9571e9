//! weftd with the test-only fault hook (feature `fault-injection`): the supervision tests run
//! it. Built only on request (`cargo build -p weft-agent --features fault-injection --bin
//! weftd-fault`), never by a workspace or release build.

#[path = "weftd.rs"]
mod weftd;

fn main() -> std::process::ExitCode {
    weftd::main()
}
