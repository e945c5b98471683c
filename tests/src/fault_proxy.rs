//! A fault-injecting HTTP proxy for tests: it sits between an S3 client and the real S3
//! server and, as the test switches it, passes requests through or answers them the way a
//! failing S3 (or the network to it) does: `503 SlowDown` bursts, resets and stalls mid-body,
//! stalls before the first byte, truncated bodies and outages.
//!
//! Every client connection carries one request: the proxy reads its head and body, asks
//! upstream over a fresh connection and answers with `connection: close`, so a fault always
//! hits exactly the request it was meant for, never a pooled connection of an earlier one.
//! Only `content-length` request bodies are supported (what the S3 SDK sends).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to a request instead of passing it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// S3's `503 Slow Down` error with its XML body, as S3 answers a prefix over its rate.
    SlowDown,
    /// The response head and half the body, then a TCP reset.
    ResetMidBody,
    /// The request is read, then nothing is answered for this long; then the connection closes.
    Stall(Duration),
    /// The response head and half the body, then nothing for this long; then the connection
    /// closes.
    StallMidBody(Duration),
    /// The response head (whose `content-length` announces the whole body) and half the body,
    /// then a clean close.
    TruncatedBody,
    /// The connection is reset as soon as the request head has arrived, as when S3 (or the
    /// route to it) is down.
    Outage,
}

/// A fault and the requests it applies to.
#[derive(Debug, Clone)]
pub struct Injection {
    fault: Fault,
    /// How many more matching requests get the fault; `None`: every one.
    remaining: Option<usize>,
    /// Only requests whose path contains this get the fault.
    path_contains: Option<String>,
    /// Only ranged requests whose range starts at this byte get the fault.
    range_from: Option<u64>,
}

impl Injection {
    /// The fault for every request from now on.
    pub fn always(fault: Fault) -> Self {
        Self { fault, remaining: None, path_contains: None, range_from: None }
    }

    /// The fault for the next `n` requests, then pass-through again.
    pub fn next(n: usize, fault: Fault) -> Self {
        Self { fault, remaining: Some(n), path_contains: None, range_from: None }
    }

    /// Only requests whose path contains `part` (such as `model.onnx`) count.
    pub fn on_paths_containing(mut self, part: &str) -> Self {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// Only ranged requests (`range: bytes=<first>-...`) for a part starting at `first` count.
    pub fn on_ranges_from(mut self, first: u64) -> Self {
        self.range_from = Some(first);
        self
    }
}

#[derive(Debug, Default)]
struct State {
    injection: Option<Injection>,
    requests: Vec<String>,
    faulted: Vec<String>,
}

impl State {
    /// The fault this request gets, if any, counting it down.
    fn fault_for(&mut self, path: &str, range: Option<&str>) -> Option<Fault> {
        self.requests.push(path.to_owned());
        let injection = self.injection.as_mut()?;
        if injection.path_contains.as_deref().is_some_and(|part| !path.contains(part)) {
            return None;
        }
        let wanted = injection.range_from.map(|first| format!("bytes={first}-"));
        if wanted.is_some_and(|wanted| !range.is_some_and(|r| r.starts_with(&wanted))) {
            return None;
        }
        match &mut injection.remaining {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        self.faulted.push(path.to_owned());
        Some(injection.fault)
    }
}

/// The proxy; it stops listening when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://host:port`),
    /// passing everything through.
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A broken client or upstream connection ends only that exchange.
                    let _ = serve(client, &upstream, &state).await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The endpoint URL to give an S3 client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `injection` from now on, replacing the previous one.
    pub fn inject(&self, injection: Injection) {
        self.state.lock().unwrap().injection = Some(injection);
    }

    /// Passes every request through again.
    pub fn pass_through(&self) {
        self.state.lock().unwrap().injection = None;
    }

    /// The paths of every request seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The paths of the requests that got a fault, in order.
    pub fn faulted(&self) -> Vec<String> {
        self.state.lock().unwrap().faulted.clone()
    }
}

/// A request or response head, and the bytes read past its end.
struct Head {
    text: String,
    rest: Vec<u8>,
}

impl Head {
    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// The head with its `connection` (and `expect`) headers replaced by `connection: close`.
    fn closing(&self) -> Vec<u8> {
        let mut out = String::new();
        for line in self.text.lines() {
            let name = line.split(':').next().unwrap_or("").trim();
            if ["connection", "expect", "keep-alive"].iter().any(|h| name.eq_ignore_ascii_case(h)) {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("connection: close\r\n\r\n");
        out.into_bytes()
    }
}

async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Head> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok(Head { text, rest: buf[end + 4..].to_vec() });
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the rest of a `content-length` body whose start came with the head.
async fn read_body(stream: &mut TcpStream, head: &Head) -> std::io::Result<Vec<u8>> {
    let mut body = head.rest.clone();
    let length = head.content_length().unwrap_or(0);
    if body.len() < length {
        let mut rest = vec![0u8; length - body.len()];
        stream.read_exact(&mut rest).await?;
        body.extend_from_slice(&rest);
    }
    Ok(body)
}

/// Resets a connection (RST, not FIN), as a crashed peer or a middlebox does.
fn reset(stream: TcpStream) {
    // A zero linger does not block on drop, which is why tokio deprecates the general case.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
    <Message>Please reduce your request rate.</Message><RequestId>FAULTPROXY</RequestId>\
    <HostId>fault-proxy</HostId></Error>";

async fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let request = read_head(&mut client).await?;
    let mut words = request.first_line().split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let path = words.next().unwrap_or("").to_owned();
    let fault = state.lock().unwrap().fault_for(&path, request.header("range"));
    if request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    match fault {
        Some(Fault::Outage) => {
            reset(client);
            return Ok(());
        }
        Some(Fault::Stall(duration)) => {
            tokio::time::sleep(duration).await;
            return Ok(());
        }
        Some(Fault::SlowDown) => {
            read_body(&mut client, &request).await?;
            let body = if method == "HEAD" { "" } else { SLOW_DOWN };
            let response = format!(
                "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                SLOW_DOWN.len()
            );
            client.write_all(response.as_bytes()).await?;
            return client.shutdown().await;
        }
        _ => {}
    }
    let body = read_body(&mut client, &request).await?;
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&request.closing()).await?;
    server.write_all(&body).await?;
    let mut response = read_head(&mut server).await?;
    while response.first_line().split_whitespace().nth(1) == Some("100") {
        let rest = std::mem::take(&mut response.rest);
        response = read_head(&mut (&rest[..]).chain(&mut server)).await?;
    }
    client.write_all(&response.closing()).await?;
    let status = response.first_line().split_whitespace().nth(1).unwrap_or("");
    let length = if method == "HEAD" || status == "204" || status == "304" {
        Some(0)
    } else {
        response.content_length()
    };
    // How much of the body to send before the fault strikes.
    let cut = match fault {
        Some(Fault::ResetMidBody | Fault::StallMidBody(_) | Fault::TruncatedBody) => {
            length.map(|n| n / 2)
        }
        _ => length,
    };
    let mut sent = 0usize;
    let mut pending = response.rest;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(cut) = cut {
            pending.truncate(cut - sent.min(cut));
        }
        client.write_all(&pending).await?;
        sent += pending.len();
        if cut.is_some_and(|cut| sent >= cut) {
            break;
        }
        let n = server.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        pending = chunk[..n].to_vec();
    }
    client.flush().await?;
    match fault {
        Some(Fault::ResetMidBody) => reset(client),
        Some(Fault::StallMidBody(duration)) => tokio::time::sleep(duration).await,
        _ => client.shutdown().await?,
    }
    Ok(())
}
