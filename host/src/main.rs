//! The `switchyard` binary: everything lives in the library.

// glibc's malloc showed up as ~13 % of the gateway's CPU with tracing on (spans allocate
// per attribute); mimalloc's thread-local free lists make those allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::app::cli::main()
}
