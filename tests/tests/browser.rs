//! The `edge run` web page in a real headless Chromium (Debian `chromium` + `chromium-driver`,
//! installed by scripts/setup.sh), driven over WebDriver: the shipped default bundle replays the
//! shipped DAVIS sample (blackswan); the page loads, the MJPEG stream shows frames, a frame is
//! captured and a box dragged around the swan with the mouse, the target appears, the overlay
//! then tints it, and the events place it where the ground truth is.

use fss_tests::{
    bbox_where, box_iou, free_port, http_request, workspace_binary, workspace_root, TempDir,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C WebDriver's element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Kills the child on drop (the test may panic).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct WebDriver {
    addr: String,
    session: String,
}

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let b = body.map(|v| v.to_string());
        let (code, text) =
            http_request(&self.addr, method, &full, b.as_deref()).expect("webdriver");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(code, 200, "webdriver {method} {path}: {text}");
        v["value"].clone()
    }

    fn script(&self, js: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": js, "args": args })),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Polls a script until it returns a truthy value.
    fn wait_for(&self, what: &str, js: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let v = self.script(js, json!([]));
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().unwrap_or(0.0) != 0.0,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Bounding box `[x, y, w, h]` of the non-zero pixels of a label PNG.
fn gt_box(path: &Path) -> [f64; 4] {
    let m = image::open(path).unwrap().to_luma8();
    bbox_where(m.width(), m.height(), |x, y| m.get_pixel(x, y)[0] != 0).expect("an object")
}

/// Fraction of the live view's pixels tinted with target 1's colour (230, 25, 75 at 50 %).
const TINT_FRACTION_JS: &str = "
  const img = document.getElementById('stream');
  if (!img.naturalWidth) return -1;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] - d[i + 1] > 70 && d[i] - d[i + 2] > 30) n++;
  return n / (c.width * c.height);";

#[test]
fn browser_captures_a_box_support_and_the_overlay_shows_the_target() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).is_file(),
            "{tool} missing: scripts/setup.sh installs Debian's chromium and chromium-driver"
        );
    }
    let root = workspace_root();
    let sample = root.join("models/default/sample");
    let tmp = TempDir::new("browser");
    let events = tmp.path().join("events.jsonl");
    let masks = tmp.path().join("masks");
    let mut edge = Command::new(workspace_binary("edge"))
        .args(["run", "--bundle"])
        .arg(root.join("models/default"))
        .arg("--source")
        .arg(&sample)
        .args([
            "--sequence",
            "blackswan",
            "--fps",
            "4",
            "--loop",
            "--threads",
            "2",
        ])
        .args(["--http", "127.0.0.1:0", "--state"])
        .arg(tmp.path().join("state"))
        .arg("--events")
        .arg(&events)
        .arg("--masks")
        .arg(&masks)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start edge run");
    // Drain edge's stderr for the whole test (a full pipe would block it); keep it for messages.
    let stderr = BufReader::new(edge.stderr.take().unwrap());
    let _edge = Guard(edge);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("web page: http://").nth(1) {
                    let _ = tx.send(rest.trim_end_matches('/').to_string());
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    let addr = rx.recv_timeout(Duration::from_secs(120)).ok();
    let edge_log = move || log.lock().unwrap().join("\n");
    let addr = addr.expect("edge run printed no address");

    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let _driver = Guard(driver);
    let wd_addr = format!("127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(30);
    while http_request(&wd_addr, "GET", "/status", None).is_err() {
        assert!(Instant::now() < end, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--window-size=1400,1000"] }
    }}});
    let (code, text) = http_request(&wd_addr, "POST", "/session", Some(&caps.to_string())).unwrap();
    assert_eq!(code, 200, "new session: {text}");
    let session = serde_json::from_str::<Value>(&text).unwrap()["value"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let wd = WebDriver {
        addr: wd_addr,
        session,
    };

    wd.call(
        "POST",
        "/url",
        Some(json!({ "url": format!("http://{addr}/") })),
    );
    // The stream shows frames.
    wd.wait_for(
        "the live stream",
        "return document.getElementById('stream').naturalWidth",
        Duration::from_secs(120),
    );
    let before = wd.script(TINT_FRACTION_JS, json!([])).as_f64().unwrap();

    // Capture a frame, then drag a box around the swan (ground truth of that frame).
    wd.click("#capture-btn");
    let frame = wd.wait_for(
        "the captured frame",
        "return (typeof capture !== 'undefined' && capture && frameImg) ? capture.source_frame : null",
        Duration::from_secs(60),
    );
    let frame = frame.as_str().unwrap().to_string();
    let b = gt_box(&sample.join(format!("Annotations/480p/blackswan/{frame}.png")));
    let geo = wd.script(
        "const c = document.getElementById('capture-canvas'); const r = c.getBoundingClientRect();
         return [c.width, c.height, r.width, r.height];",
        json!([]),
    );
    let g: Vec<f64> = geo
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (sx, sy) = (g[2] / g[0], g[3] / g[1]);
    // Offsets from the canvas's centre, in CSS pixels.
    let off = |x: f64, y: f64| {
        (
            ((x - g[0] / 2.0) * sx).round() as i64,
            ((y - g[1] / 2.0) * sy).round() as i64,
        )
    };
    let (x0, y0) = off(b[0], b[1]);
    let (x1, y1) = off(b[0] + b[2], b[1] + b[3]);
    let canvas = json!({ ELEMENT: wd.element("#capture-canvas") });
    wd.call("POST", "/actions", Some(json!({ "actions": [{
        "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
        "actions": [
            { "type": "pointerMove", "duration": 0, "origin": canvas, "x": x0, "y": y0 },
            { "type": "pointerDown", "button": 0 },
            { "type": "pointerMove", "duration": 150, "origin": canvas, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2 },
            { "type": "pointerMove", "duration": 150, "origin": canvas, "x": x1, "y": y1 },
            { "type": "pointerUp", "button": 0 }
        ]}]})));
    let dragged = wd.script("return box", json!([]));
    let d: Vec<f64> = dragged
        .as_array()
        .expect("a box was dragged")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        box_iou([d[0], d[1], d[2], d[3]], b) > 0.9,
        "dragged {d:?}, truth {b:?}"
    );

    let name = wd.element("#target-name");
    wd.call("POST", &format!("/element/{name}/clear"), Some(json!({})));
    wd.call(
        "POST",
        &format!("/element/{name}/value"),
        Some(json!({ "text": "swan" })),
    );
    wd.click("#add-btn");
    let msg = wd.wait_for(
        "the target to be added",
        "const m = document.getElementById('message'); return (m.className === 'error' || m.textContent.startsWith('Target')) ? m.className + ': ' + m.textContent : null",
        Duration::from_secs(60),
    );
    assert_eq!(
        msg.as_str().unwrap(),
        "ok: Target 'swan' has 1 shot(s).",
        "edge stderr:\n{}",
        edge_log()
    );
    // The targets table shows it with a live area.
    let area = wd.wait_for(
        "the target's live area",
        "const c = document.querySelector('#targets tr[data-name=\"swan\"] .area'); return (c && c.textContent.endsWith('%') && parseFloat(c.textContent) > 0) ? c.textContent : null",
        Duration::from_secs(60),
    );
    eprintln!("live area of 'swan': {area}");
    // The overlay tints it.
    let end = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let f = wd.script(TINT_FRACTION_JS, json!([])).as_f64().unwrap();
        if f > 0.02 || Instant::now() > end {
            break f;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("tinted fraction of the live view: {before:.4} before, {after:.4} after the target");
    assert!(
        after > 0.02 && after > 5.0 * before,
        "before {before}, after {after}"
    );
    wd.call("DELETE", "", None);

    // Segmentation quality: the masks of every frame of the sequence (it loops) against the
    // ground truth (J), and the events name the target.
    let end = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&masks).map_or(0, |d| d.count()) < 10 {
        assert!(
            Instant::now() < end,
            "fewer than 10 frames segmented in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut js = Vec::new();
    for e in std::fs::read_dir(&masks).unwrap() {
        let p = e.unwrap().path();
        let pred = image::open(&p).unwrap().to_luma8();
        let gt = image::open(
            sample
                .join("Annotations/480p/blackswan")
                .join(p.file_name().unwrap()),
        )
        .unwrap()
        .to_luma8();
        let (mut inter, mut union) = (0u64, 0u64);
        for (a, b) in pred.pixels().zip(gt.pixels()) {
            inter += (a[0] != 0 && b[0] != 0) as u64;
            union += (a[0] != 0 || b[0] != 0) as u64;
        }
        js.push(inter as f64 / union.max(1) as f64);
    }
    assert!(!js.is_empty(), "no mask written");
    let j = js.iter().sum::<f64>() / js.len() as f64;
    eprintln!("box support: J {j:.3} over {} frames", js.len());
    // A box support refined in feature space reaches J 0.31-0.41 on this sequence depending on
    // which frame was captured (measured with each of the 10 frames as the support); a whole-frame
    // prediction would score ~0.10 (the swan's share of the frame), an empty one 0.
    assert!(j > 0.25, "J {j:.3} of the box support");
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(
        text.lines().any(|l| l.contains("\"name\":\"swan\"")),
        "no event names the target"
    );
}
