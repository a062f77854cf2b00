//! Target `recall`: queries a server's space and reports recall latency. Queries come
//! from the same synthetic distribution as the observations (ids the space does not have),
//! so they land where real queries would.

use std::time::{Duration, Instant};

use anyhow::Context;
use engram::client::{ClientOptions, Session};
use engram::index::{Consistency, RecallQuery};
use engram::synthetic;
use engram::wal::Lsn;

use super::{report, Args, ConsistencyArg, Report};

pub fn run(args: &Args) -> anyhow::Result<Report> {
    let cert = std::fs::read(&args.cert)
        .with_context(|| format!("reading the server certificate {}", args.cert.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<Vec<f64>>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|sender| {
                let options =
                    ClientOptions::new(args.addr, cert.clone(), &format!("engram-recall-{sender}"));
                let mine: Vec<u64> = (sender as u64..args.count)
                    .step_by(args.connections)
                    .collect();
                let (seed, space, dim, distribution, k) = (
                    args.seed,
                    args.space.clone(),
                    args.dim,
                    args.distribution,
                    args.k,
                );
                let consistency = match args.consistency {
                    ConsistencyArg::ReadYourWrites => Consistency::ReadYourWrites,
                    ConsistencyArg::Eventual => Consistency::Eventual,
                    ConsistencyArg::AsOf => Consistency::AsOf(Lsn(args.as_of)),
                };
                let interval = (args.rate > 0)
                    .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
                tokio::spawn(async move {
                    let mut session = Session::connect(&options, None).await?;
                    let mut latencies = Vec::with_capacity(mine.len());
                    let start = Instant::now();
                    for (i, &n) in mine.iter().enumerate() {
                        if let Some(interval) = interval {
                            tokio::time::sleep_until((start + interval * i as u32).into()).await;
                        }
                        let embedding = synthetic::embedding(
                            seed,
                            &space,
                            &format!("query-{n}"),
                            dim,
                            distribution,
                        );
                        let query = RecallQuery {
                            consistency,
                            ..RecallQuery::new(&space, embedding, k)
                        };
                        let t = Instant::now();
                        let recalled = session.recall(&query).await?;
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        anyhow::ensure!(!recalled.hits.is_empty(), "no results in {space}");
                    }
                    session.goodbye().await?;
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("recall task"));
        }
        out
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(report("recall", all, args.count, 0, seconds))
}
