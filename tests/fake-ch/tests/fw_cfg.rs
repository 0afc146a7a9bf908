//! #15: the fake's two builds, as cloud-hypervisor.md section 7 describes them: a stock build
//! lists no `fw_cfg` in vmm.ping and silently drops `payload.fw_cfg_config`; a `fw_cfg` build
//! (FAKE_CH_FW_CFG=1) keeps it, refuses a bare item list, opens `file=` at vm.boot, sizes it by
//! its metadata (a pipe reads as empty), fails on a missing file, and needs each toggled-on
//! payload part.

mod common;

use std::os::fd::AsRawFd;
use std::process::Child;

use base64::Engine;
use common::*;
use nix::fcntl::OFlag;
use serde_json::{Value, json};

struct Fake {
    dir: TempDir,
    api: std::path::PathBuf,
    child: Child,
    kernel: String,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(fw_cfg_build: bool) -> Fake {
    let dir = TempDir::new("fwcfg");
    let api = dir.join("api.sock");
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let mut cmd = fake(&dir, &["--api-socket", api.to_str().unwrap()]);
    if fw_cfg_build {
        cmd.env("FAKE_CH_FW_CFG", "1");
    }
    let child = cmd.spawn().unwrap();
    wait_for_api(&api);
    Fake {
        kernel: kernel.to_str().unwrap().to_owned(),
        dir,
        api,
        child,
    }
}

fn put(f: &Fake, route: &str, body: &Value) -> Response {
    http(&f.api, "PUT", route, Some(&body.to_string()))
}

fn config(f: &Fake, items: Value, toggles: Value) -> Value {
    let mut fw = json!({ "items": items });
    for (k, v) in toggles.as_object().unwrap() {
        fw[k] = v.clone();
    }
    json!({"payload": {"kernel": f.kernel, "cmdline": "x", "fw_cfg_config": fw}})
}

#[test]
fn a_stock_build_drops_fw_cfg_items_without_a_word() {
    let f = start(false);
    let ping = http(&f.api, "GET", "vmm.ping", None).json();
    assert_eq!(ping["features"], json!(["io_uring", "kvm"]));
    let file = f.dir.join("value");
    std::fs::write(&file, b"v").unwrap();
    let items = json!({"item_list": [{"name": "opt/io.systemd.credentials/a", "file": file}]});
    let cfg = config(&f, items, json!({"initramfs": false}));
    assert_eq!(put(&f, "vm.create", &cfg).status, 204);
    let info = http(&f.api, "GET", "vm.info", None).json();
    assert!(
        info["config"]["payload"].get("fw_cfg_config").is_none(),
        "{info}"
    );
    assert_eq!(http(&f.api, "PUT", "vm.boot", None).status, 204);
    assert!(!f.dir.join("rec/fw_cfg.json").exists());
}

#[test]
fn a_fw_cfg_build_reads_files_at_boot_and_pipes_as_empty() {
    let f = start(true);
    let ping = http(&f.api, "GET", "vmm.ping", None).json();
    assert_eq!(ping["features"], json!(["fw_cfg", "io_uring", "kvm"]));
    let file = f.dir.join("value");
    std::fs::write(&file, b"file,value\n\0x").unwrap();
    // A bare list is not the `items` struct.
    let bare = config(&f, json!([{"name": "a", "file": file}]), json!({}));
    assert_eq!(put(&f, "vm.create", &bare).status, 400);
    let long = format!("opt/io.systemd.credentials/{}", "n".repeat(40));
    let items = json!({"item_list": [
        {"name": "opt/io.systemd.credentials/a", "file": file},
        {"name": long, "string": "s"},
    ]});
    let cfg = config(&f, items, json!({"initramfs": false}));
    assert_eq!(put(&f, "vm.create", &cfg).status, 204);
    // vm.info shows a file= item's path, never its content.
    let info = http(&f.api, "GET", "vm.info", None);
    let list = &info.json()["config"]["payload"]["fw_cfg_config"]["items"]["item_list"];
    assert_eq!(list[0]["file"], file.to_str().unwrap());
    assert!(!info.body.windows(10).any(|w| w == b"file,value"));
    assert_eq!(http(&f.api, "PUT", "vm.boot", None).status, 204);
    let loaded = read_json(&f.dir.join("rec/fw_cfg.json"));
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    assert_eq!(b64(&loaded[0]["content"]), b"file,value\n\0x");
    assert_eq!(
        loaded[1]["name"].as_str().unwrap().len(),
        55,
        "cut silently"
    );
    drop(f);

    // A pipe the process inherited, named /proc/self/fd/N: boots, reads as empty.
    let (r, _w) = nix::unistd::pipe2(OFlag::empty()).unwrap();
    nix::unistd::write(&_w, b"lost").unwrap();
    let f = start(true);
    let path = format!("/proc/self/fd/{}", r.as_raw_fd());
    let items = json!({"item_list": [{"name": "opt/io.systemd.credentials/p", "file": path}]});
    assert_eq!(
        put(
            &f,
            "vm.create",
            &config(&f, items, json!({"initramfs": false}))
        )
        .status,
        204
    );
    assert_eq!(http(&f.api, "PUT", "vm.boot", None).status, 204);
    let loaded = read_json(&f.dir.join("rec/fw_cfg.json"));
    assert_eq!(loaded[0]["size"], 0);
}

#[test]
fn a_fw_cfg_build_fails_the_boot_on_a_missing_file_or_payload_part() {
    let missing = json!({"item_list": [{"name": "opt/x", "file": "/nonexistent/x"}]});
    for (items, toggles, want) in [
        (
            missing,
            json!({"initramfs": false}),
            "Error adding fw_cfg item",
        ),
        (json!({"item_list": []}), json!({}), "missing --initramfs"),
    ] {
        let f = start(true);
        assert_eq!(
            put(&f, "vm.create", &config(&f, items, toggles)).status,
            204
        );
        let boot = http(&f.api, "PUT", "vm.boot", None);
        assert_eq!(boot.status, 500);
        assert!(
            String::from_utf8_lossy(&boot.body).contains(want),
            "{want}: {}",
            String::from_utf8_lossy(&boot.body)
        );
    }
}
