//! `edge run` and `edge support` end to end on a test bundle and the synthetic source: the JSON
//! API (capture, add with a box, list, remove), events, the MJPEG stream, restart persistence,
//! frame dropping, clean shutdown on SIGTERM, and the error paths.

use edge::live::source::SyntheticSource;
use fss_tests::testkit::write_test_bundle;
use fss_tests::{bbox_where, box_iou, http_request, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::edge_cmd;

/// A running `edge run` with its stderr collected by a thread.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    fn start(args: &[String]) -> Running {
        let mut child = edge_cmd()
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edge run");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.log.push(l.clone());
                if l.contains(needle) {
                    return l;
                }
            }
        }
        panic!(
            "no line with '{needle}' in {timeout:?}; stderr so far:\n{}",
            self.log.join("\n")
        );
    }

    /// The `host:port` the page is served on.
    fn http_addr(&mut self) -> String {
        let l = self.wait_line("web page: http://", Duration::from_secs(120));
        l.split("http://")
            .nth(1)
            .unwrap()
            .trim_end_matches('/')
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// SIGTERM, then the exit status and the rest of stderr.
    fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "edge run did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(l);
        }
        let log = self.log.join("\n");
        assert!(!log.contains("panicked"), "{log}");
        (status.success(), log)
    }
}

/// `--bundle B --state S --source SRC` followed by `extra`: the arguments of `edge run`.
fn live_args(bundle: &Path, state: &Path, source: &str, extra: &[&str]) -> Vec<String> {
    let b = bundle.to_str().unwrap();
    let s = state.to_str().unwrap();
    ["--bundle", b, "--state", s, "--source", source]
        .iter()
        .chain(extra)
        .map(|v| v.to_string())
        .collect()
}

/// A temporary folder with a 64x64 test bundle: `(dir, bundle, state folder)`.
fn setup(tag: &str) -> (TempDir, PathBuf, PathBuf) {
    let tmp = TempDir::new(tag);
    let bundle = tmp.path().join("bundle");
    write_test_bundle(&bundle, 64, 64);
    let state = tmp.path().join("state");
    (tmp, bundle, state)
}

impl Drop for Running {
    /// A failed assertion must not leave `edge run` behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST /api/capture` until the source has delivered a frame (503 "no frame captured yet"
/// before, for at most a minute); the last answer.
fn first_capture(addr: &str) -> (u16, String) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_request(addr, "POST", "/api/capture", None).unwrap();
        if code != 503 || Instant::now() > end {
            return (code, body);
        }
        assert!(body.contains("no frame captured yet"), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The bounding box `[x, y, w, h]` of the synthetic disc in frame `index`.
fn disc_box(w: u32, h: u32, index: u64) -> [f64; 4] {
    let m = SyntheticSource::truth(w, h, index);
    bbox_where(w, h, |x, y| m.data[(y * w + x) as usize] != 0).expect("the disc")
}

fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

#[test]
fn web_api_adds_a_target_from_a_box_and_it_is_segmented_persisted_and_removed() {
    let (tmp, bundle, state) = setup("live-api");
    let events = tmp.path().join("events.jsonl");
    let summary = tmp.path().join("summary.json");
    let (w, h) = (96u32, 72u32);
    let args = live_args(
        &bundle,
        &state,
        "synthetic:96x72",
        &[
            "--fps",
            "20",
            "--http",
            "127.0.0.1:0",
            "--events",
            events.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
        ],
    );
    let mut run = Running::start(&args);
    let addr = run.http_addr();

    let (code, body) = http_request(&addr, "GET", "/", None).unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("capture-canvas") && body.contains("src=\"stream\""),
        "{body}"
    );
    let (code, body) = http_request(&addr, "GET", "/api/targets", None).unwrap();
    assert_eq!((code, json(&body)), (200, serde_json::json!([])));

    // A capture without a box is refused with a reason; the server keeps running. Before the
    // first frame a capture is 503 "no frame captured yet" (the page is up before the source).
    let (code, body) = first_capture(&addr);
    assert_eq!(code, 200, "{body}");
    let cap = json(&body);
    assert_eq!(
        (cap["width"].as_u64(), cap["height"].as_u64()),
        (Some(96), Some(72))
    );
    let id = cap["id"].as_u64().unwrap();
    let frame = cap["frame"].as_u64().unwrap();
    let (code, body) = http_request(
        &addr,
        "POST",
        "/api/targets",
        Some(&format!("{{\"name\":\"disc\",\"capture\":{id}}}")),
    )
    .unwrap();
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("needs a box"),
        "{body}"
    );
    let (code, _) = http_request(&addr, "GET", &format!("/api/capture/{id}.jpg"), None).unwrap();
    assert_eq!(code, 200);

    // The disc's true box in the captured frame.
    let b = disc_box(w, h, frame);
    let req = format!(
        "{{\"name\":\"disc\",\"capture\":{id},\"box\":[{},{},{},{}]}}",
        b[0], b[1], b[2], b[3]
    );
    let (code, body) = http_request(&addr, "POST", "/api/targets", Some(&req)).unwrap();
    assert_eq!(code, 200, "{body}");
    let t = json(&body);
    assert_eq!(
        (t["name"].as_str(), t["label"].as_u64(), t["shots"].as_u64()),
        (Some("disc"), Some(1), Some(1))
    );

    // Frames after the shot: the disc is found where it is.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = http_request(&addr, "GET", "/api/stats", None).unwrap();
    assert_eq!(code, 200);
    let stats = json(&body);
    assert_eq!(stats["latest"]["targets"][0]["name"], "disc");
    assert!(
        stats["pipeline"]["frames_processed"].as_u64().unwrap() > 5,
        "{stats}"
    );
    let stages = stats["pipeline"]["stages"].as_array().unwrap();
    for s in ["preprocess", "encoder", "head", "post", "overlay"] {
        let st = stages.iter().find(|x| x["stage"] == s).unwrap();
        assert!(
            st["samples"].as_u64().unwrap() > 0,
            "stage {s} not timed: {stats}"
        );
    }

    // The MJPEG stream sends JPEG parts.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("Content-Type: image/jpeg") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("multipart/x-mixed-replace"));
    drop(s);

    let (ok, log) = run.terminate();
    assert!(ok, "edge run exited with an error:\n{log}");
    assert!(log.contains("stopped (signal)"), "{log}");
    let sum = json(&std::fs::read_to_string(&summary).unwrap());
    assert!(sum["rss_end_kib"].as_u64().is_some());

    // Events after the shot: the target with a box close to the disc's.
    let evs = read_events(&events);
    let found: Vec<f64> = evs
        .iter()
        .filter(|e| e["frame"].as_u64().unwrap() > frame + 2)
        .filter_map(|e| {
            let t = &e["targets"][0];
            let bb: Vec<f64> = t["bbox"]
                .as_array()?
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            Some(box_iou(
                [bb[0], bb[1], bb[2], bb[3]],
                disc_box(w, h, e["frame"].as_u64().unwrap()),
            ))
        })
        .collect();
    assert!(
        found.len() >= 5,
        "too few events with the target: {}",
        found.len()
    );
    let mean = found.iter().sum::<f64>() / found.len() as f64;
    assert!(mean > 0.5, "mean box IoU with the disc {mean:.2}");
    let e = evs.last().unwrap();
    for k in ["frame", "timestamp_ms", "width", "height", "targets"] {
        assert!(e.get(k).is_some(), "event without {k}: {e}");
    }
    for k in ["name", "area_px", "area_fraction", "bbox", "score"] {
        assert!(e["targets"][0].get(k).is_some(), "target without {k}: {e}");
    }

    // Restart: the target is still there; then removed through the API.
    let mut run = Running::start(&args);
    let addr = run.http_addr();
    let (_, body) = http_request(&addr, "GET", "/api/targets", None).unwrap();
    assert_eq!(json(&body)[0]["name"], "disc", "{body}");
    let (code, _) = http_request(&addr, "DELETE", "/api/targets/disc", None).unwrap();
    assert_eq!(code, 200);
    let (code, body) = http_request(&addr, "DELETE", "/api/targets/disc", None).unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, _) = http_request(&addr, "GET", "/nope", None).unwrap();
    assert_eq!(code, 404);
    let (ok, log) = run.terminate();
    assert!(ok, "{log}");
    let listed = edge_cmd()
        .args(["support", "list", "--state", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("no targets"));
}

#[test]
fn token_is_required_off_loopback_and_accepted_as_query_cookie_or_bearer() {
    let (_tmp, bundle, state) = setup("live-token");
    let mut run = Running::start(&live_args(
        &bundle,
        &state,
        "synthetic:64x48",
        &[
            "--fps",
            "10",
            "--http",
            "127.0.0.1:0",
            "--token",
            "s3cret-token",
        ],
    ));
    let addr = run.http_addr();
    let (code, _) = http_request(&addr, "GET", "/api/stats", None).unwrap();
    assert_eq!(code, 401);
    let (code, _) = http_request(&addr, "GET", "/api/stats?token=wrong-token!", None).unwrap();
    assert_eq!(code, 401);
    let (code, _) = http_request(&addr, "GET", "/api/stats?token=s3cret-token", None).unwrap();
    assert_eq!(code, 200);
    let (ok, log) = run.terminate();
    assert!(ok, "{log}");
}

#[test]
fn inference_slower_than_capture_drops_stale_frames_instead_of_queueing() {
    let (tmp, bundle, state) = setup("live-drop");
    let support = tmp.path().join("support.png");
    SyntheticSource::render(160, 120, 0).save(&support).unwrap();
    let b = disc_box(160, 120, 0);
    let out = edge_cmd()
        .args([
            "support",
            "add",
            "--state",
            state.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--name",
            "disc",
            "--image",
            support.to_str().unwrap(),
        ])
        .arg("--box")
        .arg(format!("{},{},{},{}", b[0], b[1], b[2], b[3]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = tmp.path().join("summary.json");
    // Capture as fast as possible (rendering a small frame takes well under a millisecond),
    // inference at 160x120 through the encoder takes longer: frames must be dropped.
    let out = edge_cmd()
        .args([
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--source",
            "synthetic:160x120",
            "--frames",
            "600",
            "--fps",
            "0",
        ])
        .args([
            "--size",
            "128x128",
            "--state",
            state.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped (source ended)"), "{stderr}");
    let s = json(&std::fs::read_to_string(&summary).unwrap());
    let st = &s["stats"];
    let (cap, done, dropped) = (
        st["frames_captured"].as_u64().unwrap(),
        st["frames_processed"].as_u64().unwrap(),
        st["frames_dropped"].as_u64().unwrap(),
    );
    assert_eq!(cap, 600);
    assert!(
        dropped > 0 && done < cap,
        "captured {cap}, processed {done}, dropped {dropped}"
    );
    assert_eq!(
        done + dropped,
        cap,
        "every frame is either processed or dropped, none queued"
    );
}

#[test]
fn bad_sources_configs_and_supports_get_clear_messages() {
    let tmp = TempDir::new("live-bad");
    let bundle = tmp.path().join("bundle");
    write_test_bundle(&bundle, 64, 64);
    let b = bundle.to_str().unwrap();
    let check = |args: &[&str], needles: &[&str]| {
        let out = edge_cmd().args(args).output().unwrap();
        let se = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "should fail: {args:?}");
        assert!(!se.contains("panicked"), "{se}");
        for n in needles {
            assert!(se.contains(n), "'{n}' not in: {se}");
        }
        assert_eq!(
            se.trim().lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{se}"
        );
    };
    check(
        &[
            "run",
            "--bundle",
            b,
            "--source",
            "synthetic",
            "--button-line",
            "17",
        ],
        &["--gpio-chip"],
    );
    let missing = tmp.path().join("nowhere");
    check(
        &[
            "run",
            "--bundle",
            b,
            "--source",
            missing.to_str().unwrap(),
            "--no-http",
        ],
        &["nowhere", "does not exist"],
    );
    let cfg = tmp.path().join("edge.toml");
    std::fs::write(&cfg, "[source]\npath = \"synthetic\"\nfsp = 3\n").unwrap();
    check(
        &["run", "--bundle", b, "--config", cfg.to_str().unwrap()],
        &["edge.toml", "line 3", "fsp"],
    );
    check(
        &[
            "run",
            "--bundle",
            b,
            "--source",
            "/dev/video0",
            "--format",
            "h264",
        ],
        &["unknown pixel format 'h264'"],
    );
    check(
        &[
            "run",
            "--bundle",
            b,
            "--source",
            "synthetic",
            "--http",
            "nonsense",
        ],
        &["IP:PORT"],
    );
    let img = tmp.path().join("s.png");
    SyntheticSource::render(64, 48, 0).save(&img).unwrap();
    let empty = tmp.path().join("empty.png");
    image::GrayImage::new(64, 48).save(&empty).unwrap();
    let state = tmp.path().join("state");
    let s = state.to_str().unwrap();
    let i = img.to_str().unwrap();
    let e = empty.to_str().unwrap();
    let add = |name: &str, extra: &[&str]| -> Vec<String> {
        let base = [
            "support", "add", "--state", s, "--bundle", b, "--name", name, "--image", i,
        ];
        base.iter().chain(extra).map(|v| v.to_string()).collect()
    };
    let check_owned = |args: Vec<String>, needles: &[&str]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        check(&refs, needles)
    };
    check_owned(add("x", &["--mask", e]), &["empty"]);
    check_owned(add("x", &[]), &["--mask", "--box"]);
    check_owned(add("x", &["--box", "0,0,64,48"]), &["whole frame"]);
    check_owned(add("a/b", &["--box", "1,1,9,9"]), &["not allowed"]);
    check(
        &["support", "remove", "--state", s, "--name", "ghost"],
        &["no target named 'ghost'"],
    );
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("targets.json"), "{\"format\": 1, \"key\"").unwrap();
    check(
        &["support", "list", "--state", s],
        &["targets.json", "damaged"],
    );
}

#[cfg(feature = "camera")]
#[test]
fn unplugged_camera_is_reported_and_the_run_keeps_going_until_stopped() {
    let (_tmp, bundle, state) = setup("live-nocam");
    let mut run = Running::start(&live_args(&bundle, &state, "/dev/video97", &["--no-http"]));
    let l = run.wait_line("reconnecting", Duration::from_secs(60));
    assert!(
        l.contains("/dev/video97") && l.contains("no such device"),
        "{l}"
    );
    run.wait_line("reconnecting", Duration::from_secs(60));
    let (ok, log) = run.terminate();
    assert!(ok, "{log}");
}

#[test]
fn the_packaged_config_passes_check_config() {
    let (_tmp, bundle, _) = setup("live-config");
    let cfg = fss_tests::workspace_root().join("packaging/edge.toml");
    let out = edge_cmd()
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        so.contains("config ok") && so.contains("/dev/video0") && so.contains("127.0.0.1:8080"),
        "{so}"
    );
}

#[test]
fn the_temporal_reach_is_checked_and_reported() {
    let (_tmp, bundle, _) = setup("live-reach");
    let run = |reach: &str| {
        edge_cmd()
            .args(["run", "--bundle", bundle.to_str().unwrap()])
            .args(["--source", "synthetic", "--temporal-reach", reach])
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let out = run("1.5");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("temporal reach 1.5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fss_tests::assert_clean_error(&run("-1"), &["temporal_reach", "-1"]);
}

#[cfg(not(feature = "camera"))]
#[test]
fn a_camera_without_the_camera_feature_is_a_clear_error() {
    let (_tmp, bundle, state) = setup("live-nocamfeature");
    let out = edge_cmd()
        .args([
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--source",
            "/dev/video0",
        ])
        .args(["--state", state.to_str().unwrap(), "--no-http"])
        .output()
        .unwrap();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && se.contains("without the `camera` feature"),
        "{se}"
    );
}

#[test]
fn bad_requests_busy_ports_and_missing_gpio_chips_are_reported_and_the_run_goes_on() {
    let (_tmp, bundle, state) = setup("live-badreq");
    let mut run = Running::start(&live_args(
        &bundle,
        &state,
        "synthetic:64x48",
        &[
            "--fps",
            "10",
            "--http",
            "127.0.0.1:0",
            "--gpio-chip",
            "no-such-chip",
            "--led-line",
            "3",
        ],
    ));
    let addr = run.http_addr();
    let l = run.wait_line("GPIO disabled:", Duration::from_secs(60));
    assert!(
        l.contains("'no-such-chip'") || l.contains("cannot list GPIO chips"),
        "{l}"
    );
    // Requests without a capture use the newest frame: wait for the first one.
    let (code, body) = first_capture(&addr);
    assert_eq!(code, 200, "{body}");
    let post = |body: &str| http_request(&addr, "POST", "/api/targets", Some(body)).unwrap();
    let (code, body) = post("{\"name\": ");
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("bad request body"),
        "{body}"
    );
    let (code, body) = post("{\"name\": \"x\", \"box\": [500, 500, 10, 10]}");
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("outside"),
        "{body}"
    );
    let (code, body) = post("{\"name\": \"x\", \"mask_png\": \"data:image/png;base64,AAAA\"}");
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"].as_str().unwrap().contains("not a PNG"),
        "{body}"
    );
    let (code, _) = http_request(&addr, "PUT", "/api/stats", None).unwrap();
    assert_eq!(code, 405);
    // The same address again: a one-line error, not a panic.
    let out = edge_cmd()
        .arg("run")
        .args(live_args(&bundle, &state, "synthetic", &["--http", &addr]))
        .output()
        .unwrap();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && se.contains(&format!("cannot listen on {addr}")),
        "{se}"
    );
    // The first run still answers.
    let (code, _) = http_request(&addr, "GET", "/api/stats", None).unwrap();
    assert_eq!(code, 200);
    let (ok, log) = run.terminate();
    assert!(ok, "{log}");
}
