//! `EtcdClient`: a minimal client of etcd's JSON gateway (`POST /v3/...`) over one kept-alive
//! HTTP/1.1 connection, so that a timed put costs what a real client's put costs: no process spawn,
//! no new connection per request (the same as Concord's gRPC client, which keeps its channel).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// One member's client endpoint.
#[derive(Debug)]
pub struct EtcdClient {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl EtcdClient {
    /// A client of the member at `addr`; each request fails after `timeout` without an answer.
    pub fn new(addr: SocketAddr, timeout: Duration) -> EtcdClient {
        EtcdClient {
            addr,
            timeout,
            conn: None,
        }
    }

    /// `PUT key value`, acknowledged once etcd committed it (etcd fsyncs its WAL before that).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let body = json!({ "key": STANDARD.encode(key), "value": STANDARD.encode(value) });
        self.post("/v3/kv/put", &body).map(|_| ())
    }

    /// The member's status: its id (`header.member_id`) and the leader's (`leader`).
    pub fn status(&mut self) -> Result<Value, String> {
        self.post("/v3/maintenance/status", &json!({}))
    }

    /// The member's Prometheus metrics (`GET /metrics`), as text.
    pub fn metrics(&mut self) -> Result<String, String> {
        let result = self.try_request("GET", "/metrics", "");
        if result.is_err() {
            self.conn = None;
        }
        let (status, text) = result?;
        if status != 200 {
            return Err(format!(
                "etcd at {} answered {status} to /metrics",
                self.addr
            ));
        }
        Ok(text)
    }

    /// Whether this member is the leader.
    pub fn is_leader(&mut self) -> Result<bool, String> {
        let s = self.status()?;
        let leader = s["leader"].as_str().unwrap_or("0");
        Ok(leader != "0" && s["header"]["member_id"].as_str() == Some(leader))
    }

    /// One request; on any failure the connection is dropped, so the next request dials anew.
    fn post(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        let result = self.try_post(path, body);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn try_post(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        let addr = self.addr;
        let (status, text) = self.try_request("POST", path, &body.to_string())?;
        if status != 200 {
            return Err(format!("etcd at {addr} answered {status}: {}", text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("etcd at {addr}: not JSON ({e}): {text}"))
    }

    /// One request on the kept connection: the status and the body.
    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let addr = self.addr;
        let conn = self.connection()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let io = |e: std::io::Error| format!("etcd at {addr}: {e}");
        conn.get_mut().write_all(request.as_bytes()).map_err(io)?;
        read_response(conn).map_err(io)
    }

    fn connection(&mut self) -> Result<&mut BufReader<TcpStream>, String> {
        if self.conn.is_none() {
            let addr = self.addr;
            let io = |e: std::io::Error| format!("cannot reach etcd at {addr}: {e}");
            let stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
            stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
            self.conn = Some(BufReader::new(stream));
        }
        // Set just above.
        Ok(self.conn.as_mut().expect("a connection"))
    }
}

/// Reads one HTTP/1.1 response: the status code and the body (by Content-Length or chunked).
fn read_response(conn: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let status_line = read_line(conn)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        let line = read_line(conn)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = match (chunked, length) {
        (true, _) => read_chunked(conn)?,
        (false, Some(n)) => {
            let mut body = vec![0; n];
            conn.read_exact(&mut body)?;
            body
        }
        (false, None) => return Err(bad("a response without a length")),
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn read_chunked(conn: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size = read_line(conn)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // The empty line after the last chunk (no trailers from etcd).
            read_line(conn)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])?;
        read_line(conn)?;
    }
}

/// A line without its CRLF; an error at end of stream (the server closed the connection).
fn read_line(conn: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection was closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
