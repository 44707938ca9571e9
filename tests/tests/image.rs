//! weft's container image (deploy/image): `deploy/image/build.sh --bin-dir <cargo's binaries>
//! --cni-plugin <the static plugin>` builds it into a temporary podman storage, and the test
//! checks what is in it — exactly weftd, netctl, the weft CNI plugin (statically linked: the
//! node runs it with its own libc), nft, wireguard-go and the shared libraries `ldd` lists for
//! weftd, netctl, nft and wireguard-go, the two empty directories, the entrypoint and labels —
//! and that each binary runs inside it (`podman run --network none`): weftd and netctl print the
//! workspace version, the plugin its version and the CNI VERSION answer, nft prints its version
//! and applies weft's masquerade ruleset in the container's own network namespace, and
//! wireguard-go prints the host's version and, in a container with the DaemonSet's privileges
//! (root, NET_ADMIN alone, no_new_privs, read-only root file system) and the host's
//! /dev/net/tun, makes its TUN device there and answers on its configuration socket in a
//! mounted directory; without NET_ADMIN it cannot. build.sh refuses to ship a dynamically
//! linked plugin, and refuses to build without wireguard-go.
//!
//! podman runs in the environment of `weft_tests::podman` (storage, runc state, /var/lib and
//! /var/tmp in a temp dir, a test network namespace as its host); the Drop guard removes the
//! containers, their cgroups and the temp dir with the image, also when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde_json::Value;
use weft_agent::firewall::{render, MasqRules};
use weft_tests::podman::{eventually, require_program, Podman};
use weft_tests::procs::{bin, run_input};
use weft_tests::repo_root;
use weft_tests::shipped::{linkage, static_plugin, this_machine, Profile};

/// The workspace version (weft-tests inherits it).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const NFT: &str = "/usr/sbin/nft";
/// Debian's userspace WireGuard, shipped at the same path (deploy/overlays/wireguard-userspace
/// has weftd start it).
const WIREGUARD_GO: &str = "/usr/bin/wireguard-go";
/// weft's dynamically linked binaries in the image, with their names in the cargo target
/// directory (the image carries the libraries they load).
const DYNAMIC_BINARIES: [(&str, &str); 2] = [
    ("/usr/local/bin/weftd", "weftd"),
    ("/usr/local/bin/netctl", "netctl"),
];
/// The CNI plugin in the image, statically linked.
const PLUGIN: &str = "/opt/weft/bin/weft";
const EMPTY_DIRS: [&str; 2] = ["/etc/weft", "/run/weft"];
/// Where rootful podman keeps its state by default; the test must create none of them.
const DEFAULT_PODMAN_PATHS: [&str; 5] = [
    "/var/lib/containers",
    "/run/containers",
    "/run/libpod",
    "/run/runc",
    "/var/lib/cni",
];
/// Upper bound for everything in the image except weft's own binaries: glibc's loader,
/// libc, libm, libgcc_s (weftd, netctl), nft with its eight libraries and wireguard-go (2.6 MB,
/// libc only) come to ≈ 8.1 MB on Debian 12. The bound catches a copied directory or an extra
/// runtime, not a library update.
const RUNTIME_MAX_BYTES: u64 = 16_000_000;
/// Sanity bound for the whole image. Built from `cargo build` (debug) binaries with their
/// debug info stripped it is ≈ 80 MB, from release binaries ≈ 34 MB; the debug weftd alone is
/// ≈ 174 MB with its debug info, so a build that forgot to strip fails here.
const IMAGE_MAX_BYTES: u64 = 100_000_000;

/// The shared objects `ldd` lists for `binary` (absolute paths, the loader included).
fn shared_libs(binary: &Path) -> BTreeSet<String> {
    let (code, out, err) = run_input(
        Command::new("ldd").arg(binary).env("LC_ALL", "C"),
        None,
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "ldd {}: {err}{out}", binary.display());
    assert!(
        !out.contains("not found"),
        "{} misses libraries on this machine:\n{out}",
        binary.display()
    );
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// One entry of the image's file system.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File { size: u64, mode: u32 },
    Other(String),
}

/// Every path below `root`, as an absolute path inside the image.
fn walk(root: &Path) -> BTreeMap<String, Entry> {
    use std::os::unix::fs::PermissionsExt;
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            let ft = meta.file_type();
            if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                visit(root, &path, out);
            } else if ft.is_file() {
                out.insert(
                    rel,
                    Entry::File {
                        size: meta.len(),
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            } else {
                out.insert(rel, Entry::Other(format!("{ft:?}")));
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

/// `/a/b/c` → `/a`, `/a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    Path::new(path)
        .ancestors()
        .skip(1)
        .filter(|a| *a != Path::new("/"))
        .map(|a| a.display().to_string())
}

fn podman_state_paths() -> BTreeSet<&'static str> {
    DEFAULT_PODMAN_PATHS
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[test]
fn image_holds_exactly_the_binaries_and_their_libraries_and_each_runs() {
    let state_before = podman_state_paths();
    require_program("bash");
    require_program("ldd");
    assert!(
        Path::new(NFT).is_file(),
        "{NFT} not found: run `sudo bash tests/install-deps.sh` (it installs nftables)"
    );
    assert!(
        Path::new(WIREGUARD_GO).is_file(),
        "{WIREGUARD_GO} not found: run `sudo bash tests/install-deps.sh` (it installs wireguard-go)"
    );
    require_program("ip");
    let bin_dir = bin("weftd").parent().unwrap().to_path_buf();
    let plugin = static_plugin(Profile::Debug);
    let image = format!("localhost/weft:{VERSION}");
    let p = Podman::new("image");
    let temp = p.path("");
    let script = repo_root().join("deploy/image/build.sh");

    // The plugin in cargo's directory is the workspace's dynamic build: the script refuses to
    // ship it, says what to use instead, and builds nothing.
    let (code, out, err) = run_input(
        p.command("bash")
            .arg(&script)
            .arg("--bin-dir")
            .arg(&bin_dir),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "build.sh shipped a dynamic plugin:\n{err}\n{out}");
    let weft_in_bin_dir = bin_dir.join("weft").display().to_string();
    assert!(
        err.contains(&format!("{weft_in_bin_dir} is dynamically linked"))
            && err.contains("--cni-plugin")
            && err.contains("cni-plugin/build-static.sh"),
        "{err}"
    );
    assert_ne!(
        p.podman(&["image", "exists", &image]).0,
        0,
        "an image was built"
    );

    // Without wireguard-go on the build host (hidden here by /dev/null bound over it, in a
    // mount namespace of this call alone) the script names the package and builds nothing.
    let (code, out, err) = run_input(
        p.command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -n --bind /dev/null \"$1\" && shift && exec bash \"$@\"")
            .arg("sh")
            .arg(WIREGUARD_GO)
            .arg(&script)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--cni-plugin")
            .arg(&plugin),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(
        code, 1,
        "build.sh built without wireguard-go:\n{err}\n{out}"
    );
    assert!(
        err.contains(&format!("{WIREGUARD_GO} not found"))
            && err.contains("apt-get install wireguard-go"),
        "{err}"
    );
    assert_ne!(
        p.podman(&["image", "exists", &image]).0,
        0,
        "an image was built without wireguard-go"
    );

    // Build: the script copies the binaries cargo already built, no cargo run, no pull.
    let (code, out, err) = run_input(
        p.command("bash")
            .arg(&script)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--cni-plugin")
            .arg(&plugin),
        None,
        Duration::from_secs(180),
    );
    assert_eq!(code, 0, "build.sh failed ({code}):\n{err}\n{out}");
    assert_eq!(out.trim(), image, "build.sh prints the image name:\n{err}");
    eprintln!("{}", err.lines().last().unwrap_or_default());
    assert_eq!(p.podman(&["image", "exists", &image]).0, 0, "no {image}");

    // Configuration: entrypoint, labels, PATH (weftd looks nft up there), two layers.
    let inspect: Value = serde_json::from_str(&p.ok(&["image", "inspect", &image])).unwrap();
    let info = &inspect[0];
    let config = &info["Config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/weftd"])
    );
    assert!(
        config["Cmd"].is_null(),
        "no CMD expected: {}",
        config["Cmd"]
    );
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "weft");
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("http")),
        "source label: {labels}"
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        env.iter()
            .any(|e| e.starts_with("PATH=") && e.split(':').any(|d| d.ends_with("/usr/sbin"))),
        "PATH must name /usr/sbin (nft): {env:?}"
    );
    assert_eq!(
        info["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(2),
        "a runtime layer and a weft layer: {}",
        info["RootFS"]
    );

    // Contents: exactly the five programs, the libraries ldd lists for the dynamic ones
    // (weftd, netctl, nft and wireguard-go, which loads libc alone; a static wireguard-go would
    // add none), two empty directories, and the directories leading to them. No shell,
    // nothing else.
    let mut libs = shared_libs(Path::new(NFT));
    libs.extend(shared_libs(Path::new(WIREGUARD_GO)));
    for (_, name) in DYNAMIC_BINARIES {
        libs.extend(shared_libs(&bin_dir.join(name)));
    }
    let programs: BTreeSet<String> = DYNAMIC_BINARIES
        .iter()
        .map(|(path, _)| path.to_string())
        .chain([
            PLUGIN.to_string(),
            NFT.to_string(),
            WIREGUARD_GO.to_string(),
        ])
        .collect();
    let want_files: BTreeSet<String> = programs.iter().chain(&libs).cloned().collect();
    let want_dirs: BTreeSet<String> = want_files
        .iter()
        .map(String::as_str)
        .chain(EMPTY_DIRS)
        .flat_map(|p| ancestors(p).collect::<Vec<_>>())
        .chain(EMPTY_DIRS.map(String::from))
        .collect();
    let mount = p.ok(&["image", "mount", &image]);
    let tree = walk(Path::new(mount.trim()));
    // The plugin the image ships (the file weftd install-cni copies to the node).
    let shipped = linkage(&Path::new(mount.trim()).join(PLUGIN.trim_start_matches('/')));
    p.ok(&["image", "unmount", &image]);
    let shipped = shipped.unwrap();
    assert!(
        shipped.is_static() && shipped.machine == this_machine(),
        "the image's plugin is not a static executable for this machine: {shipped:?}"
    );
    let files: BTreeSet<String> = tree
        .iter()
        .filter(|(_, e)| **e != Entry::Dir)
        .map(|(p, _)| p.clone())
        .collect();
    let dirs: BTreeSet<String> = tree
        .iter()
        .filter(|(_, e)| **e == Entry::Dir)
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(
        files.difference(&want_files).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "files in the image that should not be there"
    );
    assert_eq!(
        want_files.difference(&files).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "files missing from the image"
    );
    assert_eq!(dirs, want_dirs, "directories in the image");
    for dir in EMPTY_DIRS {
        assert!(
            !tree.keys().any(|p| p.starts_with(&format!("{dir}/"))),
            "{dir} is not empty"
        );
    }
    for path in &programs {
        match &tree[path] {
            Entry::File { mode, .. } => {
                assert_eq!(mode & 0o111, 0o111, "{path} is not executable ({mode:o})")
            }
            other => panic!("{path} is not a regular file: {other:?}"),
        }
    }

    // Size: the files, and nothing hidden besides them.
    let size_of = |pred: &dyn Fn(&str) -> bool| -> u64 {
        tree.iter()
            .filter(|(p, _)| pred(p))
            .map(|(_, e)| match e {
                Entry::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    };
    let content = size_of(&|_| true);
    let weft = size_of(&|p| p == PLUGIN || DYNAMIC_BINARIES.iter().any(|(w, _)| *w == p));
    let image_size = info["Size"].as_u64().expect("image size");
    eprintln!(
        "image {image}: {} (files {}: weft binaries {}, loader + libraries + nft + wireguard-go {}, of which wireguard-go {})",
        mb(image_size),
        mb(content),
        mb(weft),
        mb(content - weft),
        mb(size_of(&|p| p == WIREGUARD_GO))
    );
    assert!(
        content - weft < RUNTIME_MAX_BYTES,
        "runtime part is {} (bound {})",
        mb(content - weft),
        mb(RUNTIME_MAX_BYTES)
    );
    assert!(
        image_size >= content && image_size < content + 1_000_000,
        "image size {image_size} should be its files ({content}) plus tar headers"
    );
    assert!(
        image_size < IMAGE_MAX_BYTES,
        "image is {} (bound {})",
        mb(image_size),
        mb(IMAGE_MAX_BYTES)
    );

    // Each program runs inside the image, with no network and no pull.
    let run_in_image = |extra: &[&str], args: &[&str], input: Option<&[u8]>| {
        let mut all = vec![
            "run",
            "--rm",
            "--pull=never",
            "--network",
            "none",
            "--cgroup-parent",
            &p.cgroup_parent,
        ];
        all.extend_from_slice(extra);
        all.push(&image);
        all.extend_from_slice(args);
        let (code, out, err) = match input {
            Some(bytes) => p.podman_input(&all, bytes),
            None => p.podman(&all),
        };
        assert_eq!(
            code,
            0,
            "podman {} failed ({code}):\n{err}\n{out}",
            all.join(" ")
        );
        out
    };
    // weftd through the image's ENTRYPOINT.
    assert_eq!(
        run_in_image(&[], &["--version"], None).trim(),
        format!("weftd {VERSION}")
    );
    assert_eq!(
        run_in_image(
            &["--entrypoint", "/usr/local/bin/netctl"],
            &["--version"],
            None
        )
        .trim(),
        format!("netctl {VERSION}")
    );
    // The plugin, run by hand, names itself and its CNI versions; its CNI VERSION answer is
    // the one the binary cargo built gives.
    assert_eq!(
        run_in_image(&["--entrypoint", PLUGIN], &["--version"], None),
        format!("weft {VERSION}\nCNI spec versions: 0.3.1, 0.4.0, 1.0.0, 1.1.0\n")
    );
    let out = run_in_image(
        &["--entrypoint", PLUGIN, "--env", "CNI_COMMAND=VERSION"],
        &[],
        None,
    );
    let answer: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("CNI VERSION answer is not JSON ({e}): {out}"));
    let supported: Vec<&str> = answer["supportedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        supported.contains(&"1.0.0") && supported.contains(&"1.1.0"),
        "{answer}"
    );
    let (code, host_out, err) = run_input(
        Command::new(bin("weft")).env("CNI_COMMAND", "VERSION"),
        Some(b""),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "weft VERSION on the host: {err}");
    assert_eq!(
        answer,
        serde_json::from_str::<Value>(host_out.trim()).unwrap()
    );
    // nft: the same version as the host's, and it applies weft's ruleset (in the
    // container's own network namespace, which goes away with it).
    let (code, host_nft, err) = run_input(
        Command::new(NFT).arg("--version"),
        None,
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "nft --version on the host: {err}");
    let nft_version = run_in_image(&["--entrypoint", NFT], &["--version"], None);
    assert!(nft_version.starts_with("nftables v"), "{nft_version}");
    assert_eq!(nft_version.trim(), host_nft.trim());
    let rules = render(&MasqRules::v4(
        "10.244.0.0/16".parse::<Ipv4Network>().unwrap(),
        "10.244.1.0/24".parse::<Ipv4Network>().unwrap(),
    ));
    let echoed = run_in_image(
        &[
            "--interactive",
            "--cap-add",
            "NET_ADMIN",
            "--entrypoint",
            NFT,
        ],
        &["--echo", "--file", "-"],
        Some(rules.as_bytes()),
    );
    assert!(
        echoed.contains("add chain ip weft postrouting") && echoed.contains("masquerade"),
        "nft in the image did not apply weft's rules:\n{echoed}"
    );

    // wireguard-go: the host's version, and its device in a container as the DaemonSet runs it.
    let (code, host_wg, err) = run_input(
        Command::new(WIREGUARD_GO).arg("--version"),
        None,
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "wireguard-go --version on the host: {err}");
    let wg_version = run_in_image(&["--entrypoint", WIREGUARD_GO], &["--version"], None);
    let first_line = |s: &str| s.lines().next().unwrap_or_default().trim().to_string();
    assert!(
        first_line(&wg_version).starts_with("wireguard-go v"),
        "{wg_version}"
    );
    assert_eq!(first_line(&wg_version), first_line(&host_wg));
    wireguard_go_makes_its_device_with_net_admin_alone(&p, &image);

    // Cleanup: the guard removes containers, cgroups and the temp dir with the storage.
    let cgroups = p.cgroup_dirs();
    let left = p.ok(&["ps", "--all", "--quiet"]);
    assert!(left.trim().is_empty(), "containers remain: {left}");
    drop(p);
    assert!(!temp.exists(), "{} remains", temp.display());
    assert!(
        cgroups.iter().all(|c| !c.exists()),
        "cgroups remain: {cgroups:?}"
    );
    assert_eq!(
        podman_state_paths(),
        state_before,
        "podman's default state paths on this machine changed"
    );
}

/// The TUN device the test's wireguard-go makes (in the container's network namespace only).
const WG_DEVICE: &str = "wgimage0";

/// One UAPI request to the socket at `path` (`get=1` or `set=1` with its lines, ended by an
/// empty line); the answer up to the empty line that ends it.
fn uapi(path: &Path, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read {}: {e} after {answer:?}", path.display()));
        if n == 0 || line == "\n" {
            return answer;
        }
        answer.push_str(&line);
    }
}

/// wireguard-go in the image, run as the wireguard-userspace overlay runs weftd (uid 0, every
/// capability dropped but NET_ADMIN, no_new_privs, read-only root file system with nothing
/// mounted over /run, its socket directory from the host), makes its TUN device in the
/// container's network namespace and is configured over its socket. The host's /dev/net/tun
/// is given both ways: as a device (`--device`, which also allows it in the device cgroup) and
/// as a plain bind mount, which is what a hostPath volume is (there the device cgroup rule
/// comes from the runtime's defaults: runc allows 10:200 to every container). Without
/// NET_ADMIN, wireguard-go cannot make the device.
fn wireguard_go_makes_its_device_with_net_admin_alone(p: &Podman, image: &str) {
    let privileges = [
        "--user",
        "0:0",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--read-only-tmpfs=false",
    ];
    let base = |name: &str, socket_dir: &Path| -> Vec<String> {
        [
            "run",
            "--pull=never",
            "--network",
            "none",
            "--cgroup-parent",
            &p.cgroup_parent,
            "--name",
            name,
        ]
        .iter()
        .chain(&privileges)
        .map(|s| s.to_string())
        .chain([
            "--volume".to_string(),
            format!("{}:/var/run/wireguard", socket_dir.display()),
        ])
        .collect()
    };
    let command = ["--entrypoint", WIREGUARD_GO, image, "-f", WG_DEVICE];
    for (name, tun) in [
        ("wg-device", ["--device", "/dev/net/tun"]),
        ("wg-bind", ["--volume", "/dev/net/tun:/dev/net/tun"]),
    ] {
        let socket_dir = p.path(name);
        std::fs::create_dir_all(&socket_dir).unwrap();
        let socket = socket_dir.join(format!("{WG_DEVICE}.sock"));
        let mut args = base(name, &socket_dir);
        args.extend(["--detach", "--cap-add", "NET_ADMIN"].map(String::from));
        args.extend(tun.map(String::from));
        args.extend(command.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        p.ok(&args);
        let up = eventually(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        let logs = || {
            let (_, out, err) = p.podman(&["logs", name]);
            format!("{out}{err}")
        };
        assert!(
            up,
            "{name}: no socket {} after 10 s:\n{}",
            socket.display(),
            logs()
        );
        let pid = p.ok(&["inspect", "--format", "{{.State.Pid}}", name]);
        let pid = pid.trim();
        let (code, link, err) = run_input(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["ip", "-d", "link", "show", WG_DEVICE]),
            None,
            Duration::from_secs(10),
        );
        assert_eq!(
            code,
            0,
            "{name}: no {WG_DEVICE} in the container: {err}\n{}",
            logs()
        );
        assert!(
            link.contains(" tun "),
            "{name}: {WG_DEVICE} is not a TUN device: {link}"
        );
        // Configured over the socket: a key and a port (a UDP bind, which needs no capability).
        // A private key as WireGuard stores it (clamped: it would rewrite other bits).
        let key = format!("{}68", "a8".repeat(31));
        let set = uapi(
            &socket,
            &format!("set=1\nprivate_key={key}\nlisten_port=51820\n\n"),
        );
        assert_eq!(set.trim(), "errno=0", "{name}: set over the socket");
        let get = uapi(&socket, "get=1\n\n");
        assert!(
            get.contains(&format!("private_key={key}\n"))
                && get.contains("listen_port=51820\n")
                && get.contains("errno=0"),
            "{name}: get over the socket: {get}"
        );
        // The device is the container's: neither this test's namespace nor podman's host has it.
        let (code, _, _) = run_input(
            Command::new("ip").args(["link", "show", WG_DEVICE]),
            None,
            Duration::from_secs(10),
        );
        assert_ne!(
            code, 0,
            "{WG_DEVICE} appeared in the test's network namespace"
        );
        assert_ne!(
            p.host.exec("ip", &["link", "show", WG_DEVICE]).0,
            0,
            "{WG_DEVICE} appeared in podman's host namespace"
        );
        p.ok(&["rm", "--force", "--time", "0", name]);
    }

    // Without NET_ADMIN: the device node opens, but making the device is refused.
    let socket_dir = p.path("wg-no-net-admin");
    std::fs::create_dir_all(&socket_dir).unwrap();
    let mut args = base("wg-no-net-admin", &socket_dir);
    args.extend(["--rm", "--device", "/dev/net/tun"].map(String::from));
    args.extend(command.map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = p.podman(&args);
    assert_ne!(code, 0, "wireguard-go ran without NET_ADMIN:\n{out}{err}");
    assert!(
        format!("{out}{err}").contains("Failed to create TUN device: operation not permitted"),
        "wireguard-go without NET_ADMIN: {out}{err}"
    );
}
