//! `switchboard-bench`: the load generator behind BENCHMARKS.md. One thread, one smol
//! executor, async-tungstenite clients; every subcommand prints one JSON summary on stdout.
//!
//! ```text
//! switchboard-bench idle   --url ws://127.0.0.1:PORT/chat --conns N [--hold S] [--rate R]
//! switchboard-bench fanout --url .. --subs N [--pubs P] [--rate R] [--secs S] [--size B] [--window W]
//! switchboard-bench storm  --url .. --conns N [--concurrency C]
//! switchboard-bench slow   --url .. [--subs N] [--rate R] [--size B] [--secs S]
//! switchboard-bench floor  [--conns N] [--size B] [--rounds R]
//! switchboard-bench pusher --url ws://127.0.0.1:PORT --subs N [--via api|client] [--pubs P] [--secs S]
//!                          [--size B] [--window W] [--pipeline K] [--app-id ID --key K --secret S]
//! switchboard-bench pusher-idle --url ws://127.0.0.1:PORT --conns N [--hold S] [--rate R]
//! switchboard-bench soak   --url .. --conns N --secs S --server-pid PID [--ping-every 2]
//!                          [--reconnect-pct 1] [--report-every 30] [--warmup 120] [--rate R]
//! ```
//!
//! `--server-pid PID` (any subcommand) adds the server's CPU and RSS over the measured window,
//! read from /proc, so the figures and the load that produced them come from the same instants.

mod args;
mod conn;
mod connect;
mod fanout;
mod floor;
mod measure;
mod pusher;
mod soak;

use std::process::ExitCode;

use serde_json::Value;
use smol::LocalExecutor;

use args::Args;

const USAGE: &str =
    "usage: switchboard-bench <idle|fanout|storm|slow|soak|pusher|pusher-idle> --url ws://IP:PORT/PATH [options]
  idle    --conns N [--hold SECS=10] [--rate CONNS_PER_S=5000] [--concurrency 256]
  storm   --conns N [--concurrency 512]
  fanout  --subs N [--pubs 1] [--rate MSGS_PER_S=0 (as fast as the window allows)] [--secs 5]
          [--size 64] [--window 64] [--warmup 1]
  slow    [--subs 100] [--rate 500] [--size 1024] [--secs 5] [--warmup 1]
  floor   [--conns 1000] [--size 64] [--rounds 20]   (no server: the kernel's cost per loopback write)
  soak    --conns N --secs S --server-pid PID [--ping-every 2] [--reconnect-pct 1] [--report-every 30]
          [--warmup 120] [--rate CONNS_PER_S=5000 (the initial ramp)] [--concurrency 256] [--flat-pct 5]
          (progress on stderr every --report-every seconds; \"pass\" in the summary)
  pusher  --subs N [--via api|client (HTTP API triggers, or client events)] [--pubs 64 (api) | 1 (client)]
          [--window 1 (api) | 64 (client), per publisher] [--pipeline 1 (api: requests in flight per
          connection)] [--secs 5] [--size 64 (event data bytes)] [--warmup 1]
  pusher-idle --conns N [--hold 10] [--rate 5000] [--concurrency 256]
          (pusher and pusher-idle: --url ws://IP:PORT, the server's root; Pusher protocol 7 at
          /app/KEY; [--app-id 1] [--key bench-key] [--secret bench-secret])
  common  [--server-pid PID] [--label TEXT]
";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(command) = argv.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if command == "--help" || command == "-h" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("switchboard-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let executor = LocalExecutor::new();
    let outcome = smol::block_on(executor.run(run(&executor, &command, args)));
    match outcome {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard-bench {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(executor: &LocalExecutor<'static>, command: &str, mut args: Args) -> Result<Value, String> {
    let mut summary = match command {
        "idle" => connect::idle(executor, &mut args).await?,
        "storm" => connect::storm(executor, &mut args).await?,
        "fanout" => fanout::fanout(executor, &mut args).await?,
        "slow" => fanout::slow(executor, &mut args).await?,
        "floor" => floor::floor(&mut args)?,
        "soak" => soak::soak(executor, &mut args).await?,
        "pusher" => pusher::pusher(executor, &mut args).await?,
        "pusher-idle" => pusher::pusher_idle(executor, &mut args).await?,
        other => return Err(format!("unknown subcommand {other:?}\n{USAGE}")),
    };
    if let Some(label) = args.take_str("label") {
        summary["label"] = Value::from(label);
    }
    args.finish()?;
    summary["scenario"] = Value::from(command);
    Ok(summary)
}
