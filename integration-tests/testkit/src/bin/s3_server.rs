//! `magnetar-s3-server`: a real S3 protocol server (s3s with its filesystem backend) for the
//! tiered-storage tests and benchmarks. Signed requests only (one access key), path-style,
//! plain HTTP on loopback; each `--bucket` is created at start. Prints
//! `s3 server ready on http://ADDR` once it takes requests. Not for production use.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

struct Opts {
    listen: SocketAddr,
    root: PathBuf,
    access_key: String,
    secret_key: String,
    buckets: Vec<String>,
}

const USAGE: &str = "usage: magnetar-s3-server --listen ADDR --root DIR --access-key K \
                     --secret-key S [--bucket NAME]...";

fn opts() -> Result<Opts> {
    let mut listen = None;
    let mut root = None;
    let mut access_key = None;
    let mut secret_key = None;
    let mut buckets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--root" => root = Some(PathBuf::from(value()?)),
            "--access-key" => access_key = Some(value()?),
            "--secret-key" => secret_key = Some(value()?),
            "--bucket" => buckets.push(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Opts {
        listen: listen.context(USAGE)?,
        root: root.context(USAGE)?,
        access_key: access_key.context(USAGE)?,
        secret_key: secret_key.context(USAGE)?,
        buckets,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    for b in &o.buckets {
        std::fs::create_dir_all(o.root.join(b)).with_context(|| format!("bucket {b}"))?;
    }
    let fs = s3s_fs::FileSystem::new(&o.root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(o.access_key, o.secret_key));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("bind {}", o.listen))?;
    println!("s3 server ready on http://{}", listener.local_addr()?);
    let http = Builder::new(TokioExecutor::new());
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
