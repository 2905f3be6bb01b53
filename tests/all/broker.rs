//! A real Kafka-protocol broker (tansu, in memory) for the Kafka tests,
//! with a TCP proxy in front that can cut the network for an outage.

#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tansu binary: `$TANSU`, else cargo's bin folder, else `PATH`.
pub fn tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return p.into();
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin/tansu"));
    match cargo_bin {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("tansu"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running broker: tansu, which clients reach through [`Proxy`] at
/// `addr`, or librdkafka's mock cluster where tansu lacks a feature.
pub struct Broker {
    child: Option<Child>,
    /// The TLS-terminating proxy (socat) in front of tansu, when started
    /// with [`Broker::start_tls`].
    tls_proxy: Option<Child>,
    /// The CA that signed the broker's certificate, with TLS.
    pub tls_ca: Option<PathBuf>,

    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// `host:port` clients connect to.
    pub addr: String,
    pub proxy: Option<Proxy>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Broker::start`] with more `tansu broker` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (listen, advertised) = (free_port(), free_port());
        let log = dir.path().join("tansu.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(extra)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the test broker {}: {e}; install it with `cargo install tansu --features \
                     dynostore` (scripts/setup does), or point $TANSU at it",
                    tansu().display()
                )
            });
        let proxy = Proxy::start(advertised, listen);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not listen within 30s; see {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            tls_proxy: None,
            tls_ca: None,
            mock: None,
            addr: format!("127.0.0.1:{advertised}"),
            proxy: Some(proxy),
            log,
            _dir: dir,
        }
    }

    /// tansu behind a TLS-terminating proxy (Debian's socat) with a
    /// certificate for 127.0.0.1 signed by a CA made here: clients reach it
    /// only over TLS. `extra` as for [`Broker::start_with`].
    pub fn start_tls(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = make_certificates(dir.path());
        let (listen, advertised) = (free_port(), free_port());
        let log = dir.path().join("tansu.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(extra)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start tansu");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let socat = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{advertised},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat (Debian's socat; scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", listen)).is_err()
            || TcpStream::connect(("127.0.0.1", advertised)).is_err()
        {
            assert!(Instant::now() < deadline, "the broker did not listen within 30s; see {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            tls_proxy: Some(socat),
            tls_ca: Some(ca),
            mock: None,
            addr: format!("127.0.0.1:{advertised}"),
            proxy: None,
            log,
            _dir: dir,
        }
    }

    /// librdkafka's in-process mock cluster, listening on loopback so that
    /// daemons in other processes reach it too. Used where tansu falls
    /// short: it does not hand a member's partitions over when the member
    /// dies without leaving (its heartbeats stop); the survivor keeps its
    /// old assignment.
    pub fn mock() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mock = MockCluster::new(1).expect("mock cluster");
        let addr = mock.bootstrap_servers();
        Self {
            child: None,
            tls_proxy: None,
            tls_ca: None,
            mock: Some(mock),
            addr,
            proxy: None,
            log: dir.path().join("none.log"),
            _dir: dir,
        }
    }

    /// The proxy in front of tansu.
    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("tansu broker with a proxy")
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        if let Some(ca) = &self.tls_ca {
            c.set("security.protocol", "ssl").set("ssl.ca.location", ca.to_string_lossy());
        }
        c
    }

    /// Creates topics: (name, partitions, compacted).
    pub async fn create_topics(&self, topics: &[(&str, i32, bool)]) {
        if let Some(mock) = &self.mock {
            for &(name, partitions, _) in topics {
                mock.create_topic(name, partitions, 1).expect("create topic");
            }
            return;
        }
        let admin: AdminClient<DefaultClientContext> = self.client().create().expect("admin client");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|&(name, partitions, compact)| {
                let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                if compact { t.set("cleanup.policy", "compact") } else { t }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics(&new, &opts).await.expect("create topics") {
            r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
        }
    }

    /// Produces `(key, value)` records to `topic` and waits for them all.
    pub fn produce(&self, topic: &str, records: &[(String, String)]) {
        let mut config = self.client();
        config.set("linger.ms", "5");
        produce_on(config, topic, records);
    }

    /// Every record of `topic` so far: (key, value).
    pub fn read_all(&self, topic: &str) -> Vec<(String, String)> {
        self.read(topic).into_iter().map(|(_, _, k, v)| (k, v)).collect()
    }

    /// Every record of `topic` so far: (partition, offset, key, value).
    /// Read to each partition's end as fetches report it: tansu's listed
    /// end offsets are not the high watermark.
    pub fn read(&self, topic: &str) -> Vec<(i32, i64, String, String)> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", "vigil-test-reader")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut open: HashSet<i32> = (0..partitions).collect();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !open.is_empty() {
            assert!(Instant::now() < deadline, "reading {topic} to its end took over 60s");
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => {
                    let text =
                        |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                    out.push((m.partition(), m.offset(), text(m.key()), text(m.payload())));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
            }
        }
        out
    }

    /// The group's committed offsets on `topic`, summed over partitions,
    /// and the sum of the partitions' ends.
    pub fn committed(&self, group: &str, topic: &str) -> (i64, i64) {
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for (p, offset, _, _) in self.read(topic) {
            let e = ends.entry(p).or_default();
            *e = (*e).max(offset + 1);
        }
        let consumer: BaseConsumer = self.client().set("group.id", group).create().expect("consumer");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition(topic, p.id());
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
        let sum = committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0).max(0)).sum();
        (sum, ends.values().sum())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in self.child.iter_mut().chain(&mut self.tls_proxy) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes a CA and a certificate for 127.0.0.1 it signs, with Debian's
/// `openssl`: `ca.pem`, `server.pem`, `server.key` in `dir`. Returns the
/// CA's path.
pub fn make_certificates(dir: &std::path::Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    let subject = |cn: &str| format!("/CN={cn}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &subject("vigil test CA"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subject("127.0.0.1"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    dir.join("ca.pem")
}

/// A CA that signed nothing the broker has, in `dir`: `other-ca.pem`.
pub fn other_ca(dir: &std::path::Path) -> PathBuf {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
        ])
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("other-ca.pem")
}

/// Produces `(key, value)` records to `topic` at `addr` and waits for them.
pub fn produce_to(addr: &str, topic: &str, records: &[(String, String)]) {
    produce_with(addr, topic, records, &[]);
}

/// [`produce_to`] with more producer settings, e.g. `compression.type`.
pub fn produce_with(addr: &str, topic: &str, records: &[(String, String)], settings: &[(&str, &str)]) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", addr).set("linger.ms", "5");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    produce_on(config, topic, records);
}

/// Produces `(key, value)` records to `topic` with a producer of `config`.
pub fn produce_on(config: ClientConfig, topic: &str, records: &[(String, String)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    for (k, v) in records {
        let mut rec = BaseRecord::to(topic).key(k.as_str()).payload(v.as_str());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Forwards a port to the broker; [`Proxy::cut`] drops every connection
/// and refuses new ones until [`Proxy::restore`], as a stopped broker does.
pub struct Proxy {
    port: u16,
    target: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(port: u16, target: u16) -> Self {
        let p = Self {
            port,
            target,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        p.listen();
        p
    }

    fn listen(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (up, conns, target, stop) = (self.up.clone(), self.conns.clone(), self.target, self.stop.clone());
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).expect("blocking");
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut list = conns.lock().expect("conns");
                        list.push(client.try_clone().expect("clone"));
                        list.push(server.try_clone().expect("clone"));
                        drop(list);
                        pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // Dropping the listener refuses new connections.
        });
    }

    /// Drops every connection and stops accepting.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::panic::catch_unwind(|| self.listen()) {
                Ok(()) => return,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
