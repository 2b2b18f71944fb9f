//! The `edge run` web page and JSON API on a small HTTP/1.1 server (std only; one request per
//! connection, `Connection: close`; the MJPEG stream holds its connection open).
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | GET | `/` | the page |
//! | GET | `/stream` | live overlay, `multipart/x-mixed-replace` MJPEG |
//! | GET | `/snapshot.jpg` | the newest overlay frame |
//! | GET | `/api/stats` | timings, counters, FPS, newest per-target observations |
//! | GET | `/api/targets` | targets: name, label, colour, shots |
//! | POST | `/api/capture` | freezes the newest frame: `{id, frame, width, height, image}` |
//! | GET | `/api/capture/<id>.jpg` | a frozen frame |
//! | POST | `/api/targets` | `{name, capture?, box?: [x,y,w,h], mask_png?: dataURL, replace?}` |
//! | DELETE | `/api/targets/<name>` | removes a target |
//!
//! Errors are JSON `{"error": "..."}` with status 400/401/404/409/503. When a token is set
//! every request must carry it: `?token=...`, the `fss_token` cookie (set when the page is
//! opened with `?token=`), or `Authorization: Bearer ...` (an MJPEG `<img>` cannot send
//! headers, hence the query parameter and cookie).

use super::pipeline::Shared;
use super::targets::Region;
use base64::Engine;
use fss_core::tensor::Mask;
use serde::Deserialize;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("page.html");
/// Request head and body limits.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Concurrent connections served (more get 503).
const MAX_CONNECTIONS: usize = 32;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }
}

/// `%XX` and `+` decoding of a URL component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request; `Err` is a one-line reason (the connection then gets a 400).
pub fn read_request(stream: &mut TcpStream) -> Result<Request, String> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let n = reader
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut head)
            .map_err(|e| format!("cannot read the request: {e}"))?;
        if n == 0 {
            return Err("connection closed before the request ended".into());
        }
        if head.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line '{first}'"));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().map_err(|_| format!("bad Content-Length '{v}'")))
        .transpose()?
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(format!(
            "request body of {len} bytes is over the {MAX_BODY}-byte limit"
        ));
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("request body shorter than its Content-Length: {e}"))?;
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes a whole response and closes.
pub fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    extra_headers: &[(&str, String)],
    body: &[u8],
) {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        status_text(code),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn respond_json(stream: &mut TcpStream, code: u16, value: &serde_json::Value) {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(stream, code, "application/json", &[], &body);
}

fn error(stream: &mut TcpStream, code: u16, msg: &str) {
    respond_json(stream, code, &json!({ "error": msg }));
}

/// The HTTP side of `edge run`.
pub struct Server {
    pub addr: SocketAddr,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (errors name the address) and serves until `shared.stop`.
    pub fn start(
        addr: SocketAddr,
        token: Option<String>,
        shared: Arc<Shared>,
    ) -> Result<Server, String> {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let token = Arc::new(token);
        let active = Arc::new(AtomicUsize::new(0));
        let handle = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                                error(&mut stream, 503, "too many connections");
                                continue;
                            }
                            active.fetch_add(1, Ordering::Relaxed);
                            let (shared, token, active) =
                                (shared.clone(), token.clone(), active.clone());
                            let spawned = std::thread::Builder::new()
                                .name("http-conn".into())
                                .spawn(move || {
                                    handle_connection(stream, &shared, token.as_deref());
                                    active.fetch_sub(1, Ordering::Relaxed);
                                });
                            if spawned.is_err() {
                                crate::live_note!("http: cannot start a connection thread");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(25));
                        }
                        Err(e) => {
                            crate::live_note!("http: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
        Ok(Server {
            addr,
            handle: Some(handle),
        })
    }

    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn authorized(req: &Request, token: Option<&str>) -> bool {
    let Some(t) = token else { return true };
    let eq = |s: &str| {
        s.len() == t.len() && s.bytes().zip(t.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    };
    req.query_param("token").is_some_and(eq)
        || req.cookie("fss_token").is_some_and(eq)
        || req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(eq)
}

fn handle_connection(mut stream: TcpStream, shared: &Shared, token: Option<&str>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let req = match read_request(&mut stream) {
        Ok(r) => r,
        Err(msg) => {
            error(&mut stream, 400, &msg);
            return;
        }
    };
    if !authorized(&req, token) {
        error(
            &mut stream,
            401,
            "missing or wrong token: add ?token=... to the address",
        );
        return;
    }
    route(&mut stream, &req, shared, token);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTarget {
    name: String,
    capture: Option<u64>,
    #[serde(rename = "box")]
    bbox: Option<[f64; 4]>,
    mask_png: Option<String>,
    #[serde(default)]
    replace: bool,
}

fn decode_mask_png(data: &str) -> Result<Mask, String> {
    let b64 = data.strip_prefix("data:image/png;base64,").unwrap_or(data);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("mask_png is not base64: {e}"))?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| format!("mask_png is not a PNG: {e}"))?;
    // A painted canvas: any opaque, non-black pixel is the target.
    let rgba = img.to_rgba8();
    let data = rgba
        .pixels()
        .map(|p| (p[3] > 0 && (p[0] > 0 || p[1] > 0 || p[2] > 0)) as u8)
        .collect();
    Mask::new(rgba.height() as usize, rgba.width() as usize, data).map_err(|e| e.to_string())
}

fn add_target(stream: &mut TcpStream, req: &Request, shared: &Shared) {
    let body: AddTarget = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return error(stream, 400, &format!("bad request body: {e}")),
    };
    let region = match (&body.bbox, &body.mask_png) {
        (Some(b), None) => Region::Box(b.map(|v| v.round() as i64)),
        (None, Some(m)) => match decode_mask_png(m) {
            Ok(m) => Region::Mask(m),
            Err(e) => return error(stream, 400, &e),
        },
        (None, None) => {
            return error(
                stream,
                400,
                "a capture needs a box [x, y, w, h] or a painted mask: drag a box or paint on the captured frame",
            )
        }
        (Some(_), Some(_)) => return error(stream, 400, "give either a box or a mask, not both"),
    };
    let capture = match body.capture {
        Some(id) => match shared.capture(id) {
            Some(c) => c,
            None => {
                return error(
                    stream,
                    404,
                    &format!("no capture {id} (only the last few are kept)"),
                )
            }
        },
        None => match shared.capture_now() {
            Some(c) => c,
            None => return error(stream, 503, "no frame captured yet"),
        },
    };
    let origin = format!(
        "web: {} on frame {}",
        region.describe(),
        capture
            .frame
            .source_name
            .clone()
            .unwrap_or_else(|| capture.frame.index.to_string())
    );
    match shared.add_shot(
        &body.name,
        capture.frame.image.clone(),
        region,
        &origin,
        body.replace,
    ) {
        Ok(t) => respond_json(stream, 200, &serde_json::to_value(t).unwrap_or_default()),
        Err(e) => error(stream, 400, &e),
    }
}

fn route(stream: &mut TcpStream, req: &Request, shared: &Shared, token: Option<&str>) {
    let m = req.method.as_str();
    let p = req.path.as_str();
    match (m, p) {
        ("GET", "/") | ("GET", "/index.html") => {
            let mut headers = Vec::new();
            if let (Some(t), Some(_)) = (token, req.query_param("token")) {
                headers.push((
                    "Set-Cookie",
                    format!("fss_token={t}; Path=/; HttpOnly; SameSite=Strict"),
                ));
            }
            respond(
                stream,
                200,
                "text/html; charset=utf-8",
                &headers,
                PAGE.as_bytes(),
            );
        }
        ("GET", "/stream") => stream_mjpeg(stream, shared),
        ("GET", "/snapshot.jpg") => match shared.stream.latest() {
            Some(j) => respond(stream, 200, "image/jpeg", &[], &j),
            None => error(stream, 503, "no frame rendered yet"),
        },
        ("GET", "/api/stats") => {
            let snap = shared.snapshot();
            let latest = shared
                .latest_result
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            respond_json(stream, 200, &json!({ "pipeline": snap, "latest": latest }));
        }
        ("GET", "/api/targets") => {
            let t = shared
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            respond_json(stream, 200, &serde_json::to_value(t).unwrap_or_default());
        }
        ("POST", "/api/capture") => match shared.capture_now() {
            Some(c) => {
                let (w, h) = c.frame.image.dimensions();
                respond_json(
                    stream,
                    200,
                    &json!({
                        "id": c.id,
                        "frame": c.frame.index,
                        "source_frame": c.frame.source_name,
                        "width": w,
                        "height": h,
                        "image": format!("/api/capture/{}.jpg", c.id),
                    }),
                )
            }
            None => error(
                stream,
                503,
                "no frame captured yet (is the source running?)",
            ),
        },
        ("POST", "/api/targets") => add_target(stream, req, shared),
        ("GET", _) if p.starts_with("/api/capture/") && p.ends_with(".jpg") => {
            let id = p["/api/capture/".len()..p.len() - 4].parse::<u64>().ok();
            match id.and_then(|id| shared.capture(id)) {
                Some(c) => {
                    let mut jpeg = Vec::new();
                    match image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92)
                        .encode_image(&*c.frame.image)
                    {
                        Ok(()) => respond(stream, 200, "image/jpeg", &[], &jpeg),
                        Err(e) => error(stream, 503, &format!("cannot encode the capture: {e}")),
                    }
                }
                None => error(stream, 404, "no such capture"),
            }
        }
        ("DELETE", _) if p.starts_with("/api/targets/") => {
            let name = percent_decode(&p["/api/targets/".len()..]);
            match shared.remove_target(&name) {
                Ok(()) => respond_json(stream, 200, &json!({ "removed": name })),
                Err(e) if e.starts_with("no target") => error(stream, 404, &e),
                Err(e) => error(stream, 409, &e),
            }
        }
        (_, "/" | "/stream" | "/snapshot.jpg" | "/api/stats" | "/api/targets" | "/api/capture") => {
            error(stream, 405, &format!("{m} is not allowed on {p}"))
        }
        _ => error(stream, 404, &format!("no such page: {p}")),
    }
}

/// Streams the live view until the client goes away or the pipeline stops.
fn stream_mjpeg(stream: &mut TcpStream, shared: &Shared) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=fssframe\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut seen = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some((seq, jpeg)) = shared.stream.wait_newer(seen, Duration::from_millis(500)) else {
            continue;
        };
        seen = seq;
        let part = format!(
            "--fssframe\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        let ok = stream
            .write_all(part.as_bytes())
            .and_then(|_| stream.write_all(&jpeg))
            .and_then(|_| stream.write_all(b"\r\n"))
            .and_then(|_| stream.flush());
        if ok.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("red%20cup"), "red cup");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn painted_masks_decode() {
        let mut img = image::RgbaImage::new(4, 3);
        img.put_pixel(1, 1, image::Rgba([255, 0, 0, 255]));
        img.put_pixel(2, 1, image::Rgba([255, 0, 0, 0]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        );
        let m = decode_mask_png(&url).unwrap();
        assert_eq!((m.width, m.height, m.count_nonzero()), (4, 3, 1));
        assert!(decode_mask_png("data:image/png;base64,!!").is_err());
    }
}
