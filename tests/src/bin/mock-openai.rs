//! The mock OpenAI upstream as a standalone server, for the benchmark and manual testing.
//!
//! `mock-openai [--listen 127.0.0.1:0] [--record] [--behaviour SPEC]`: prints `mock-openai listening on
//! http://ADDR` when ready. Without `--record` it skips bookkeeping and answers plain chat
//! requests with a fixed body, so it costs as little CPU as possible under load.

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Keep a record of requests (costs memory and time under load).
    #[arg(long)]
    record: bool,
    /// Worker threads for the runtime (default: tokio's, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// How every request is answered unless its `x-mock` header says otherwise, in the
    /// header's syntax (e.g. `chunks=20,delay_ms=2`).
    #[arg(long, default_value = "")]
    behaviour: String,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = args.threads {
        rt.worker_threads(t);
    }
    let rt = rt.build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .unwrap_or_else(|e| {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                std::process::exit(1)
            });
        let addr = listener.local_addr().expect("addr");
        println!("mock-openai listening on http://{addr}");
        let behaviour = switchyard_tests::mock::Behaviour::parse(
            &args.behaviour,
            &switchyard_tests::mock::Behaviour::default(),
        );
        switchyard_tests::mock::serve_forever(listener, args.record, behaviour).await;
    });
}
