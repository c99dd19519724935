//! Test harness shared by every crate's process-level tests: free loopback ports, temp
//! dirs, real child processes (etcd today; bookies, brokers and the standalone later) with a
//! log file each, `kill9()` and `restart()`, and condition waits instead of sleeps. When a
//! test panics, the tail of each process's log is printed so the failure can be read.
//! It depends on no Magnetar crate so that all of them can use it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A loopback port that was free a moment ago. Callers that bind it later retry on a clash.
///
/// Ports come from below the kernel's ephemeral range, handed out in turn from a per-process
/// starting point: a port from the ephemeral range (what binding port 0 gives) can be taken
/// by any outgoing connection between this check and the child's bind, which once failed CI.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + n % span).unwrap_or(0);
        if port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Runs `start` again (it picks new ports) while it fails on a port clash, up to 3 times.
async fn retry_on_clash<T, F, Fut>(mut start: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match start().await {
            Err(e) if port_clash(&e) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

/// Whether a start failed because one of its ports was taken meanwhile.
fn port_clash(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("Address already in use")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process with its output in a log file, killed when dropped.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(name: &str, program: impl Into<PathBuf>, args: Vec<String>, log: PathBuf) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.into(),
            args,
            envs: Vec::new(),
            log,
            child: None,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Proc {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the process; output is appended to its log, across restarts.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open log {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited (or was never started).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => !matches!(c.try_wait(), Ok(None)),
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. Returns whether it exited on its own.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Waits up to 30 s for `needle` to appear in the log more than `seen_before` times
    /// (counting earlier runs), failing early with the log tail if the process exits.
    pub async fn wait_for_log(&mut self, needle: &str, seen_before: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_count(needle) <= seen_before {
            if self.exited() {
                bail!(
                    "{} exited before logging {needle:?}:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {needle:?} after 30 s:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills the process if it runs, starts it again with the same arguments and waits for
    /// one more `ready` line. Its ports stay the same, so a port that something else took
    /// meanwhile is waited out (a few tries, a second apart).
    pub async fn restart_until(&mut self, ready: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            self.kill9();
            let before = self.log_count(ready);
            self.spawn()?;
            match self.wait_for_log(ready, before).await {
                Err(e) if port_clash(&e) && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The number of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} log ({}) ----\n{}\n----",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        self.kill9();
    }
}

/// One member of an [`EtcdCluster`].
struct Member {
    client_port: u16,
    /// Where `/health` answers over plain HTTP (the client port, or a metrics port when
    /// clients must speak TLS).
    health_port: u16,
    proc: Proc,
}

/// PEM files for an etcd that takes clients over TLS only and requires their certificates.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The authority clients' certificates must be signed by.
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A real etcd cluster (Debian's `etcd-server`) of one or more members on free loopback
/// ports, each with its own data dir and log.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one answers `/health` (which needs a
    /// leader). Retries with new ports on a clash.
    pub async fn start(n: usize) -> Result<EtcdCluster> {
        EtcdCluster::start_with(n, None).await
    }

    /// As [`EtcdCluster::start`], with clients over TLS when `tls` is given.
    pub async fn start_with(n: usize, tls: Option<&EtcdTlsFiles>) -> Result<EtcdCluster> {
        let program = find_program("etcd").context(
            "etcd is not installed: `make test` installs it (apt-get install etcd-server)",
        )?;
        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("magnetar-etcd-")
                .tempdir()?;
            let mut ports = Vec::with_capacity(n);
            for _ in 0..n {
                ports.push((free_port()?, free_port()?, free_port()?));
            }
            let initial: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer, _))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect();
            let initial = initial.join(",");
            let mut members = Vec::with_capacity(n);
            for (i, (client_port, peer_port, metrics_port)) in ports.into_iter().enumerate() {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let client = format!("{scheme}://127.0.0.1:{client_port}");
                let peer = format!("http://127.0.0.1:{peer_port}");
                let mut args: Vec<String> = vec![
                    "--name".into(),
                    format!("m{i}"),
                    "--data-dir".into(),
                    dir.path().join(format!("m{i}")).display().to_string(),
                    "--listen-client-urls".into(),
                    client.clone(),
                    "--advertise-client-urls".into(),
                    client,
                    "--listen-peer-urls".into(),
                    peer.clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer,
                    "--initial-cluster".into(),
                    initial.clone(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    // Our transactions may carry up to 8 MiB (meta::key::MAX_TXN_BYTES).
                    "--max-request-bytes".into(),
                    (10 * 1024 * 1024).to_string(),
                    "--logger".into(),
                    "zap".into(),
                    "--log-level".into(),
                    "warn".into(),
                ];
                let mut health_port = client_port;
                if let Some(tls) = tls {
                    health_port = metrics_port;
                    let path = |p: &Path| p.display().to_string();
                    args.extend([
                        "--cert-file".into(),
                        path(&tls.cert),
                        "--key-file".into(),
                        path(&tls.key),
                        "--trusted-ca-file".into(),
                        path(&tls.ca),
                        "--client-cert-auth".into(),
                        "--listen-metrics-urls".into(),
                        format!("http://127.0.0.1:{metrics_port}"),
                    ]);
                }
                let log = dir.path().join(format!("etcd-m{i}.log"));
                let mut proc = Proc::new(&format!("etcd m{i}"), &program, args, log);
                proc.spawn()?;
                members.push(Member {
                    client_port,
                    health_port,
                    proc,
                });
            }
            let mut cluster = EtcdCluster { dir, members };
            let mut result = Ok(());
            for i in 0..n {
                if let Err(e) = cluster.wait_healthy(i, Duration::from_secs(30)).await {
                    result = Err(e.context(cluster.members[i].proc.log_tail(20)));
                    break;
                }
            }
            match result {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    last_err = Some(e);
                    for m in &mut cluster.members {
                        m.proc.kill9();
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// `127.0.0.1:port` of every member, as etcd clients take them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd://a,b,c`, as `meta::connect` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn kill9(&mut self, member: usize) {
        self.members[member].proc.kill9();
    }

    /// Starts a killed member again on its ports and data.
    pub async fn restart(&mut self, member: usize) -> Result<()> {
        self.members[member].proc.kill9();
        self.members[member].proc.spawn()?;
        self.wait_healthy(member, Duration::from_secs(30)).await
    }

    async fn wait_healthy(&mut self, member: usize, timeout: Duration) -> Result<()> {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.members[member].health_port).parse()?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.members[member].proc.exited() {
                bail!("etcd m{member} exited during start-up");
            }
            let probe = tokio::task::spawn_blocking(move || http_get(addr, "/health")).await?;
            if let Ok(body) = probe
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("etcd m{member} not healthy after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A `magnetar bookie` process on a free port with its own data dir.
pub struct BookieProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The HTTP port (/health, /metrics).
    pub http: SocketAddr,
    dir: tempfile::TempDir,
}

impl BookieProc {
    /// Starts `program bookie ...` and waits until it logs that it is ready.
    /// Retries with new ports when one was taken meanwhile.
    pub async fn start(program: &Path, extra: &[&str]) -> Result<BookieProc> {
        retry_on_clash(|| Self::start_once(program, extra)).await
    }

    async fn start_once(program: &Path, extra: &[&str]) -> Result<BookieProc> {
        let dir = tempfile::Builder::new()
            .prefix("magnetar-bookie-")
            .tempdir()?;
        let port = free_port()?;
        let http_port = free_port()?;
        let mut args: Vec<String> = vec![
            "bookie".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--bookie-port".into(),
            port.to_string(),
            "--http-port".into(),
            http_port.to_string(),
            // a test machine's disk may be fuller than a production threshold
            "--min-free-disk-bytes".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join("bookie.log");
        let mut b = BookieProc {
            proc: Proc::new(&format!("bookie :{port}"), program, args, log),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            dir,
        };
        b.proc.spawn()?;
        b.proc.wait_for_log("bookie ready", 0).await?;
        Ok(b)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again (after `kill9`, or kills it first) on the same port and data.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart_until("bookie ready").await
    }
}

/// A `magnetar standalone` process on free ports with its own data dir.
pub struct StandaloneProc {
    pub proc: Proc,
    /// The Pulsar binary protocol address.
    pub broker: SocketAddr,
    /// The HTTP address (admin API, health, metrics).
    pub web: SocketAddr,
    dir: tempfile::TempDir,
}

impl StandaloneProc {
    /// Starts `program standalone ...` and waits until it logs that it is ready; `{broker_port}`
    /// in `extra` becomes the broker port chosen. Retries with new ports when one was taken
    /// meanwhile.
    pub async fn start(program: &Path, extra: &[&str]) -> Result<StandaloneProc> {
        Self::start_env(program, extra, &[]).await
    }

    /// [`StandaloneProc::start`] with more environment variables (e.g. a store's
    /// credentials), kept across restarts.
    pub async fn start_env(
        program: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Result<StandaloneProc> {
        retry_on_clash(|| Self::start_once(program, extra, env)).await
    }

    async fn start_once(
        program: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Result<StandaloneProc> {
        let dir = tempfile::Builder::new()
            .prefix("magnetar-standalone-")
            .tempdir()?;
        let broker = free_port()?;
        let web = free_port()?;
        // no --bookie-port: the in-process bookie opens no socket, as for most users
        let mut args: Vec<String> = vec![
            "standalone".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--broker-port".into(),
            broker.to_string(),
            "--web-port".into(),
            web.to_string(),
        ];
        // flags that must name the port chosen here say `{broker_port}`
        args.extend(
            extra
                .iter()
                .map(|s| s.replace("{broker_port}", &broker.to_string())),
        );
        let log = dir.path().join("standalone.log");
        let mut proc = Proc::new(&format!("standalone :{broker}"), program, args, log);
        for (k, v) in env {
            proc = proc.env(k, v);
        }
        let mut s = StandaloneProc {
            proc,
            broker: SocketAddr::from(([127, 0, 0, 1], broker)),
            web: SocketAddr::from(([127, 0, 0, 1], web)),
            dir,
        };
        s.proc.spawn()?;
        s.proc.wait_for_log("magnetar standalone ready", 0).await?;
        Ok(s)
    }

    pub fn service_url(&self) -> String {
        format!("pulsar://{}", self.broker)
    }

    pub fn web_url(&self) -> String {
        format!("http://{}", self.web)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again on the same ports and data (kills it first if it still runs).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart_until("magnetar standalone ready").await
    }
}

/// Credentials of the test S3 server (`magnetar-s3-server`).
pub const S3_ACCESS_KEY: &str = "magnetar-test";
pub const S3_SECRET_KEY: &str = "magnetar-test-secret";

/// A real S3 protocol server (`magnetar-s3-server`: s3s over a directory) on a free port,
/// taking requests signed with [`S3_ACCESS_KEY`] / [`S3_SECRET_KEY`].
pub struct S3Proc {
    pub proc: Proc,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl S3Proc {
    /// Starts the server built next to `magnetar`, with `buckets` created.
    pub async fn start(magnetar: &Path, buckets: &[&str]) -> Result<S3Proc> {
        retry_on_clash(|| Self::start_once(magnetar, buckets)).await
    }

    async fn start_once(magnetar: &Path, buckets: &[&str]) -> Result<S3Proc> {
        let program = magnetar.with_file_name("magnetar-s3-server");
        if !program.exists() {
            bail!(
                "no {} (cargo build --workspace --all-targets builds it)",
                program.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("magnetar-s3-").tempdir()?;
        let port = free_port()?;
        let root = dir.path().join("objects");
        std::fs::create_dir_all(&root)?;
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--root".into(),
            root.display().to_string(),
            "--access-key".into(),
            S3_ACCESS_KEY.into(),
            "--secret-key".into(),
            S3_SECRET_KEY.into(),
        ];
        for b in buckets {
            args.push("--bucket".into());
            args.push((*b).into());
        }
        let log = dir.path().join("s3.log");
        let mut s = S3Proc {
            proc: Proc::new(&format!("s3 :{port}"), program, args, log),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        s.proc.spawn()?;
        s.proc.wait_for_log("s3 server ready", 0).await?;
        Ok(s)
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory its buckets are kept in.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// The environment a client of it needs (AWS_* credentials and region).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again on the same port and objects.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart_until("s3 server ready").await
    }
}

/// A `magnetar broker` process (a cluster member) on free ports; it keeps no data of its own.
pub struct BrokerProc {
    pub proc: Proc,
    /// The Pulsar binary protocol address.
    pub broker: SocketAddr,
    /// The HTTP address (admin API, lookup, health, metrics).
    pub web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BrokerProc {
    /// Starts `program broker --meta META --cluster CLUSTER ...` and waits until it logs
    /// that it is ready. Retries with new ports when one was taken meanwhile.
    pub async fn start(
        program: &Path,
        meta: &str,
        cluster: &str,
        extra: &[&str],
    ) -> Result<BrokerProc> {
        retry_on_clash(|| Self::start_once(program, meta, cluster, extra)).await
    }

    async fn start_once(
        program: &Path,
        meta: &str,
        cluster: &str,
        extra: &[&str],
    ) -> Result<BrokerProc> {
        let dir = tempfile::Builder::new()
            .prefix("magnetar-broker-")
            .tempdir()?;
        let broker = free_port()?;
        let web = free_port()?;
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--meta".into(),
            meta.into(),
            "--cluster".into(),
            cluster.into(),
            "--broker-port".into(),
            broker.to_string(),
            "--web-port".into(),
            web.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join("broker.log");
        let mut b = BrokerProc {
            proc: Proc::new(&format!("broker :{broker}"), program, args, log),
            broker: SocketAddr::from(([127, 0, 0, 1], broker)),
            web: SocketAddr::from(([127, 0, 0, 1], web)),
            _dir: dir,
        };
        b.proc.spawn()?;
        b.proc.wait_for_log("magnetar broker ready", 0).await?;
        Ok(b)
    }

    pub fn service_url(&self) -> String {
        format!("pulsar://{}", self.broker)
    }

    pub fn web_url(&self) -> String {
        format!("http://{}", self.web)
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again on the same ports (kills it first if it still runs).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart_until("magnetar broker ready").await
    }
}

/// The `magnetar` binary the process tests run: `$MAGNETAR_BIN`, else the one cargo builds
/// next to this test. Cargo hands a package's binaries only to that package's own tests, so
/// it is built here, once per test process (a no-op when it is up to date): a binary left
/// from an earlier build of other sources would test the wrong code. The whole workspace is
/// built, with every target, so features resolve as for `cargo test --workspace` and the
/// artifacts it already built are reused (building the broker alone resolves them otherwise,
/// and would build RocksDB once more).
pub fn magnetar_bin() -> Result<&'static Path> {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(b) = BIN.get() {
        return Ok(b);
    }
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = BIN.get() {
        return Ok(b);
    }
    let path = match std::env::var_os("MAGNETAR_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            // target/<profile>/deps/<test> -> target/<profile>/magnetar
            let exe = std::env::current_exe()?;
            let profile = exe
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| anyhow::anyhow!("no target dir above {}", exe.display()))?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = std::process::Command::new(cargo)
                .args(["build", "--workspace", "--all-targets", "--quiet"])
                .status()?;
            let path = profile.join("magnetar");
            if !st.success() || !path.exists() {
                bail!("could not build magnetar at {}", path.display());
            }
            path
        }
    };
    if !path.is_file() {
        bail!("no magnetar binary at {}", path.display());
    }
    Ok(BIN.get_or_init(|| path))
}

/// A binary of the `magnetar-cli` package (`magnetar-admin`, `magnetar-perf`,
/// `magnetar-client`) next to `magnetar`; built first when a narrower `cargo test` left it out.
pub fn cli_bin(magnetar: &Path, name: &str) -> Result<PathBuf> {
    let path = magnetar.with_file_name(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "magnetar-cli", "--bin", name])
            .status()?;
        if !st.success() || !path.exists() {
            bail!("could not build {name}");
        }
    }
    Ok(path)
}

/// The Python interpreter of the venv `scripts/install-deps.sh` makes (with `pulsar-client`):
/// `$MAGNETAR_PYTHON`, else `~/.cache/magnetar/venv/bin/python`.
pub fn python() -> Result<PathBuf> {
    let p = match std::env::var_os("MAGNETAR_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/magnetar/venv/bin/python"),
    };
    if !p.is_file() {
        bail!(
            "no Python with pulsar-client at {}: run scripts/install-deps.sh (make test does)",
            p.display()
        );
    }
    Ok(p)
}

/// A single-member etcd: what most tests need.
pub struct EtcdServer(EtcdCluster);

impl EtcdServer {
    pub async fn start() -> Result<EtcdServer> {
        EtcdCluster::start(1).await.map(EtcdServer)
    }

    /// One member that takes clients over TLS only, with certificates (`tls`).
    pub async fn start_tls(tls: &EtcdTlsFiles) -> Result<EtcdServer> {
        EtcdCluster::start_with(1, Some(tls)).await.map(EtcdServer)
    }

    /// `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        self.0.endpoints().remove(0)
    }

    /// `etcd://127.0.0.1:port`.
    pub fn url(&self) -> String {
        self.0.url()
    }

    pub fn data_dir(&self) -> &Path {
        self.0.data_dir()
    }

    pub fn kill9(&mut self) {
        self.0.kill9(0);
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.0.restart(0).await
    }
}

/// A minimal blocking HTTP/1.0 GET, enough for health probes.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    http_request(addr, "GET", path, "")
}

/// A minimal blocking HTTP/1.0 request with a JSON body; returns the whole response.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// One sample of a Prometheus metric from a process's `/metrics` (unlabelled series only);
/// `None` when the page cannot be read or has no such line.
pub fn metric_value(http: SocketAddr, name: &str) -> Option<f64> {
    let page = http_get(http, "/metrics").ok()?;
    let prefix = format!("{name} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Finds a program on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
