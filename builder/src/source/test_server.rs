//! A tiny HTTP/1.1 server on 127.0.0.1 for the download tests: fixed replies
//! per path, a recorded request log, and the failure modes the fetcher must
//! handle (bodies cut off mid-way, error statuses, `Range` support or not).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with the body; a `Range: bytes=N-` request gets 206 unless `ranges` is false.
    Body { data: Vec<u8>, ranges: bool },
    /// 200 advertising the full length, then only `send` bytes, then close.
    CutOff { data: Vec<u8>, send: usize },
    /// This status with an empty body.
    Status(u16),
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

    pub fn status(code: u16) -> Self {
        Reply::Status(code)
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serve `routes`: the n-th request to a path gets the n-th reply, the
    /// last one repeating. Unknown paths get 404.
    pub fn start(routes: Vec<(&str, Vec<Reply>)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let routes: HashMap<String, Vec<Reply>> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let mut served: HashMap<String, usize> = HashMap::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                // A failed exchange shows up in the client's error; the
                // server just moves on to the next connection.
                let _ = serve(stream, &routes, &mut served, &log2);
            }
        });
        Self {
            addr,
            log,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    routes: &HashMap<String, Vec<Reply>>,
    served: &mut HashMap<String, usize>,
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range = None;
    let mut user_agent = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "user-agent" => user_agent = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    log.lock().expect("log lock").push(Request {
        path: path.clone(),
        range: range.clone(),
        user_agent,
    });

    let reply = match routes.get(&path) {
        Some(replies) if !replies.is_empty() => {
            let n = served.entry(path.clone()).or_insert(0);
            let r = replies[(*n).min(replies.len() - 1)].clone();
            *n += 1;
            r
        }
        _ => Reply::Status(404),
    };
    match reply {
        Reply::Status(code) => {
            write!(
                stream,
                "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
        Reply::Body { data, ranges } => {
            let from = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| ranges && n < data.len());
            match from {
                Some(from) => {
                    write!(
                        stream,
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                        data.len() - from,
                        data.len() - 1,
                        data.len()
                    )?;
                    stream.write_all(&data[from..])?;
                }
                None => {
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        data.len()
                    )?;
                    stream.write_all(&data)?;
                }
            }
        }
        Reply::CutOff { data, send } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            )?;
            stream.write_all(&data[..send.min(data.len())])?;
        }
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}
