//! The one loopback HTTP/1.1 server of the test suites: the stand-in's
//! release [`mirror`](crate::mirror), the builder's download tests and the
//! agent's download tests all answer through [`Server`].
//!
//! One request per connection (`Connection: close`), each connection on its
//! own thread; every request is logged with the status it got. What to
//! answer is the caller's [`Handler`]. [`Routes`] is the common handler:
//! fixed replies per path, the n-th request to a path getting the n-th
//! reply, with the failure modes a downloader must survive (a body cut off
//! mid-way, error statuses, `Range` honoured or not).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as received: the method, the request target exactly as sent
/// (an origin-form path, or an absolute URL when sent to a proxy) and the
/// headers, names lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request and the status it was answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub request: Request,
    pub status: u16,
}

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers; `Content-Length` and `Connection: close` are always sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this many body bytes, though
    /// `Content-Length` announces the whole body.
    pub cut_after: Option<usize>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_after: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn cut_after(mut self, bytes: usize) -> Self {
        self.cut_after = Some(bytes);
        self
    }
}

/// Answers one request.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running server; it stops when dropped.
pub struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Listen on `listen` (`127.0.0.1:0` for any free port) and answer with
    /// `handler` until dropped.
    pub fn start(
        listen: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log2));
                // A failed exchange shows up in the client's error; the
                // server moves on to the next connection.
                std::thread::spawn(move || {
                    let _ = exchange(stream, &*handler, &log);
                });
            }
        });
        Ok(Self {
            addr,
            log,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests answered so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Block the calling thread while the server serves.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn exchange(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Logged>>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    let mut headers = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut line)?;
        total += n;
        if n == 0 || line.trim().is_empty() || total > 64 * 1024 {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut words = request_line.split_whitespace();
    let request = Request {
        method: words.next().unwrap_or_default().to_owned(),
        target: words.next().unwrap_or_default().to_owned(),
        headers,
    };
    let response = handler(&request);
    let head_only = request.method == "HEAD";
    if let Ok(mut l) = log.lock() {
        l.push(Logged {
            request,
            status: response.status,
        });
    }
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if !head_only {
        let send = response
            .cut_after
            .unwrap_or(usize::MAX)
            .min(response.body.len());
        out.write_all(&response.body[..send])?;
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}

/// One reply of a [`Routes`] path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with the body; a `Range: bytes=N-` request gets 206 unless
    /// `ranges` is false.
    Body { data: Vec<u8>, ranges: bool },
    /// 200 announcing the full length, then only `send` bytes, then close.
    CutOff { data: Vec<u8>, send: usize },
    /// This status with this body.
    Status { code: u16, body: Vec<u8> },
}

impl Reply {
    pub fn ok(data: &[u8]) -> Self {
        Reply::Body {
            data: data.to_vec(),
            ranges: true,
        }
    }

    pub fn cut_off(data: &[u8], send: usize) -> Self {
        Reply::CutOff {
            data: data.to_vec(),
            send,
        }
    }

    /// This status with an empty body.
    pub fn status(code: u16) -> Self {
        Reply::Status {
            code,
            body: Vec::new(),
        }
    }

    pub fn without_ranges(self) -> Self {
        match self {
            Reply::Body { data, .. } => Reply::Body {
                data,
                ranges: false,
            },
            other => other,
        }
    }

    fn respond(&self, request: &Request) -> Response {
        match self {
            Reply::Status { code, body } => Response::new(*code, body.clone()),
            Reply::CutOff { data, send } => Response::new(200, data.clone()).cut_after(*send),
            Reply::Body { data, ranges } => {
                let from = request
                    .header("range")
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| *ranges && n < data.len());
                match from {
                    Some(from) => Response::new(206, data[from..].to_vec()).header(
                        "Content-Range",
                        format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
                    ),
                    None => Response::new(200, data.clone()),
                }
            }
        }
    }
}

/// Fixed replies per request target: the n-th request to a target gets the
/// n-th reply, the last one repeating. Unknown targets get 404.
#[derive(Debug)]
pub struct Routes {
    routes: HashMap<String, Vec<Reply>>,
    served: Mutex<HashMap<String, usize>>,
}

impl Routes {
    pub fn new<S: Into<String>>(routes: impl IntoIterator<Item = (S, Vec<Reply>)>) -> Self {
        Self {
            routes: routes.into_iter().map(|(p, r)| (p.into(), r)).collect(),
            served: Mutex::new(HashMap::new()),
        }
    }

    /// Serve these routes on `127.0.0.1`, any free port.
    pub fn serve(self) -> Server {
        Server::start("127.0.0.1:0", move |r| self.answer(r)).expect("bind loopback")
    }

    fn answer(&self, request: &Request) -> Response {
        let Some(replies) = self.routes.get(&request.target).filter(|r| !r.is_empty()) else {
            return Response::new(404, "not found\n");
        };
        let n = {
            let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            let n = served.entry(request.target.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        replies[n.min(replies.len() - 1)].respond(request)
    }
}
