//! A small mutation fuzzer for weft's parsers of outside input, on stable Rust.
//!
//! Each target is a pure function over bytes (a lease key and value from etcd, the network
//! config JSON, subnet.env, the CNI plugin's environment and stdin, netctl's and weftd's
//! arguments). The fuzzer starts from a seed corpus of valid inputs, applies random
//! byte-level and token-level mutations, and runs the target under `catch_unwind`: any panic
//! is a crash, saved under `tests/fuzz/crashes/<target>/` so that it becomes a regression test
//! (`tests/tests/fuzz_regressions.rs` replays every file there and in `tests/fuzz/corpus/`).
//! It is not coverage-guided; it is bounded in time and deterministic for a given seed.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use weft_agent::cli::{NetctlCli, WeftdCli};
use weft_agent::config::NetConfig;
use weft_agent::lease::{validate, LeaseAttrs, LeaseRules, SubnetKey};

/// A fuzz target: its name, its seeds and the tokens worth splicing in.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: &'static [&'static str],
    pub dict: &'static [&'static str],
}

const JSON_DICT: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e309",
    "18446744073709551616",
    "4294967296",
    "65536",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"10.0.0.0/8\"",
    "\"::/0\"",
    "\"0.0.0.0/0\"",
    "\"255.255.255.255/32\"",
    "\"fe80::1/64\"",
    ",",
    ":",
    "\"a\":",
    "{\"a\":1}",
    "\"network\":",
    "\"BACKEND\":",
    "\"Type\":\"HOST-GW\"",
    "\"\\u212a\"",
];

/// The rules of an IPv4-only, a dual-stack and an IPv6-only cluster.
fn rule_sets() -> [LeaseRules; 3] {
    let v4 = LeaseRules {
        v4: Some(("10.244.0.0/16".parse().expect("valid"), 24)),
        v6: None,
        vni: 1,
        own_public_ip: Some("192.0.2.1".parse().expect("valid")),
        own_public_ip_v6: Some("2001:db8::1".parse().expect("valid")),
    };
    let dual = LeaseRules {
        v6: Some(("fc00::/48".parse().expect("valid"), 64)),
        ..v4.clone()
    };
    let v6 = LeaseRules {
        v4: None,
        ..dual.clone()
    };
    [v4, dual, v6]
}

/// `key \n value`: a lease as the watch sees it.
fn lease(data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let key = String::from_utf8_lossy(key);
    let _ = key.parse::<SubnetKey>().map(|k| k.to_string());
    let _ = LeaseAttrs::decode(value).map(|a| a.encode());
    for rules in rule_sets() {
        if let Ok(peer) = validate(&rules, &key, value) {
            // A valid peer always re-encodes to a key that parses to the same subnets.
            let v4 = (rules.v4.is_some()).then_some(peer.subnet);
            let built = SubnetKey::new(v4, peer.subnet_v6).expect("a valid peer has a subnet");
            let again: SubnetKey = built.to_string().parse().expect("own encoding parses");
            assert_eq!(again, built);
            assert_eq!(again.primary(), peer.id());
        }
    }
}

fn net_config(data: &[u8]) {
    if let Ok(cfg) = NetConfig::parse(data) {
        // Every notice can be shown, on one line.
        for n in &cfg.notices {
            assert!(!n.to_string().contains('\n'), "{n}");
        }
        // What weft accepts, it can write back and read again identically, every key spelled
        // as documented.
        let text = serde_json::to_vec(&cfg.to_json()).expect("serializable");
        let again = NetConfig::parse(&text).expect("own output parses");
        assert_eq!(again.notices, Vec::new(), "own output needs no notice");
        // Notices are about the text as written, not written back.
        let known = NetConfig {
            notices: Vec::new(),
            ..cfg
        };
        assert_eq!(again, known);
    }
}

fn subnet_env(data: &[u8]) {
    use weft_backends::subnet_env::SubnetEnv;
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/fuzz/subnet.env");
    if let Ok(env) = SubnetEnv::parse(&text, path) {
        // What weft accepts (IPv4, dual-stack or IPv6-only), it writes back identically.
        env.validate().expect("a parsed file is consistent");
        let again = SubnetEnv::parse(&env.render(), path).expect("own output parses");
        assert_eq!(again, env);
    }
}

/// `NAME=value` lines, a blank line, then stdin: one CNI invocation.
fn cni(data: &[u8]) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let env_text = String::from_utf8_lossy(&data[..split]).to_string();
    let stdin = data.get(split + 2..).unwrap_or(&[]);
    let env: BTreeMap<String, String> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |k: &str| env.get(k).cloned();
    let _ = weft_cni::Request::parse(&lookup, stdin);
}

/// NUL-separated arguments for netctl and weftd.
fn args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut argv = vec!["prog".to_string()];
    argv.extend(text.split('\0').map(str::to_string));
    let _ = NetctlCli::try_parse_from(&argv);
    argv[0] = "weftd".into();
    let _ = WeftdCli::try_parse_from(&argv);
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "lease",
        run: lease,
        seeds: &[
            "10.244.7.0-24\n{\"PublicIP\":\"192.0.2.7\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:07\"},\"NodeName\":\"n7\"}",
            "10.244.8.0-24&fc00::-64\n{\"PublicIP\":\"192.0.2.8\",\"BackendType\":\"host-gw\"}",
            "10.244.9.0-24\n{\"PublicIP\":\"192.0.2.9\",\"BackendType\":\"vxlan\",\"BackendData\":null}",
            "10.244.10.0-24&fc00:0:0:a::-64\n{\"PublicIP\":\"192.0.2.10\",\"PublicIPv6\":\"2001:db8::a\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:0a\"},\"BackendV6Data\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:06:0a\"}}",
            "0.0.0.0-0&fc00:0:0:b::-64\n{\"PublicIP\":\"0.0.0.0\",\"PublicIPv6\":\"2001:db8::b\",\"BackendType\":\"vxlan\",\"BackendV6Data\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:06:0b\"}}",
        ],
        dict: JSON_DICT,
    },
    Target {
        name: "net-config",
        run: net_config,
        seeds: &[
            "{\"Network\":\"10.244.0.0/16\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"vxlan\",\"VNI\":1,\"Port\":8472,\"DirectRouting\":true,\"MTU\":1400}}",
            "{\"Network\":\"10.0.0.0/8\",\"SubnetMin\":\"10.1.0.0\",\"SubnetMax\":\"10.9.0.0\",\"Backend\":{\"Type\":\"host-gw\"}}",
            "{\"Network\":\"10.0.0.0/24\",\"EnableIPv6\":true,\"IPv6Network\":\"fc00::/48\",\"IPv6SubnetLen\":64}",
            "{\"EnableIPv4\":false,\"EnableIPv6\":true,\"IPv6Network\":\"fd00:10::/56\",\"IPv6SubnetLen\":60,\"IPv6SubnetMin\":\"fd00:10:0:20::\",\"IPv6SubnetMax\":\"fd00:10:0:40::\"}",
            // flannel's spellings: keys and backend names in any case, unknown keys at each level.
            "{\"network\":\"10.244.0.0/16\",\"subnetlen\":25,\"backend\":{\"type\":\"Host-GW\",\"vni\":3,\"Prot\":1}}",
            "{\"NETWORK\":\"10.1.0.0/16\",\"ENABLEIPV6\":true,\"IPV6NETWORK\":\"fc00::/48\",\"Ipv6SubnetMin\":\"fc00:0:0:2::\",\"BACKEND\":{\"TYPE\":\"VXLAN\",\"directrouting\":true,\"GBP\":true},\"EnableNFTables\":false,\"Netwrok\":1}",
            "{\"Networ\\u212a\":\"10.2.0.0/16\",\"\u{17f}ubnetLen\":26,\"Backend\":{\"mtu\":1400,\"VIN\":1}}",
        ],
        dict: JSON_DICT,
    },
    Target {
        name: "subnet-env",
        run: subnet_env,
        seeds: &[
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.3.0.1/26\nFLANNEL_MTU=9000\nFLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=fc00::/48\n",
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=\n",
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
        ],
        dict: &[
            "=", "\n", "FLANNEL_MTU=", "FLANNEL_SUBNET=", "FLANNEL_NETWORK=", "FLANNEL_IPV6_NETWORK=",
            "FLANNEL_IPV6_SUBNET=", "99999999999", "/33", "/0", "/126", "/127", "/129", "::", "::1",
            "ffff:", "#",
        ],
    },
    Target {
        name: "cni",
        run: cni,
        seeds: &[
            "CNI_COMMAND=ADD\nCNI_CONTAINERID=abc123\nCNI_NETNS=/run/netns/x\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin\n\n{\"cniVersion\":\"1.1.0\",\"name\":\"weft\",\"type\":\"weft\",\"subnetFile\":\"/run/weft/subnet.env\",\"dataDir\":\"/var/lib/cni/weft\",\"mtu\":1450}",
            "CNI_COMMAND=DEL\nCNI_CONTAINERID=abc123\nCNI_IFNAME=eth0\n\n{\"cniVersion\":\"0.4.0\",\"name\":\"weft\",\"type\":\"weft\",\"prevResult\":{\"cniVersion\":\"0.4.0\",\"ips\":[{\"address\":\"10.244.1.2/24\"}]}}",
            "CNI_COMMAND=GC\n\n{\"cniVersion\":\"1.1.0\",\"name\":\"weft\",\"type\":\"weft\",\"cni.dev/valid-attachments\":[{\"containerID\":\"a\",\"ifname\":\"eth0\"}]}",
            "CNI_COMMAND=VERSION\n\n{\"cniVersion\":\"1.1.0\"}",
        ],
        dict: &[
            "CNI_COMMAND=CHECK\n", "CNI_IFNAME=../../x\n", "CNI_CONTAINERID=\n", "\"range\":\"10.244.1.0/24\"",
            "\"cniVersion\":\"9.9.9\"", "\"dataDir\":\"../\"", "\"mtu\":-1", "\"hairpinMode\":\"yes\"",
        ],
    },
    Target {
        name: "args",
        run: args,
        seeds: &[
            "leases\0-o\0json",
            "--etcd-endpoints\0http://127.0.0.1:2379,http://[::1]:2379\0check\0--subnet-file\0/run/weft/subnet.env",
            "--iface\0eth0\0--ip-masq\0--subnet-lease-ttl\090s\0--healthz-port\08471",
            "install-cni\0--cni-conf-source\0/etc/weft/cni-conf.json",
        ],
        dict: &["\0", "--", "-o", "--etcd-prefix", "=", "--net-config", "check", "--help", "-V"],
    },
];

const INTERESTING: &[u8] = b"\0\xff\x7f\"{}[],:\\-./=&\n 0123456789e";

/// Apply 1–8 random mutations to `data`.
pub fn mutate(rng: &mut fastrand::Rng, data: &mut Vec<u8>, dict: &[&str], others: &[&str]) {
    for _ in 0..rng.usize(1..=8) {
        let len = data.len();
        match rng.u8(0..9) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                data[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(0..len);
                data[i] = INTERESTING[rng.usize(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.usize(0..=len);
                let n = rng.usize(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let a = rng.usize(0..len);
                let b = (a + rng.usize(1..=16)).min(len);
                data.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.usize(0..len);
                let b = (a + rng.usize(1..=32)).min(len);
                let chunk = data[a..b].to_vec();
                let at = rng.usize(0..=data.len());
                data.splice(at..at, chunk);
            }
            5 if !dict.is_empty() => {
                let tok = dict[rng.usize(0..dict.len())].as_bytes();
                let i = rng.usize(0..=len);
                data.splice(i..i, tok.iter().copied());
            }
            6 if !others.is_empty() => {
                let other = others[rng.usize(0..others.len())].as_bytes();
                let cut = rng.usize(0..=len);
                let from = rng.usize(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => data.truncate(rng.usize(0..len)),
            _ => {
                // A long run: oversized input must be refused, not choke.
                let i = rng.usize(0..=len);
                let b = INTERESTING[rng.usize(0..INTERESTING.len())];
                let n = rng.usize(64..=4096);
                data.splice(i..i, std::iter::repeat_n(b, n));
            }
        }
    }
}

/// What a run of one target found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub execs: u64,
    pub crashes: Vec<PathBuf>,
}

/// Where crash inputs are kept (in the repository, as regression tests).
pub fn crash_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/crashes")
        .join(target)
}

/// Run one input through a target; `Err` with the panic message on a crash.
pub fn run_one(target: &Target, input: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Fuzz `target` for `budget`, from `seed`. Crashing inputs are written to [`crash_dir`].
pub fn fuzz(target: &Target, budget: Duration, seed: u64) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Outcome::default();
    let start = Instant::now();
    while start.elapsed() < budget {
        let base = target.seeds[rng.usize(0..target.seeds.len())];
        let mut data = base.as_bytes().to_vec();
        mutate(&mut rng, &mut data, target.dict, target.seeds);
        out.execs += 1;
        if run_one(target, &data).is_err() {
            let dir = crash_dir(target.name);
            let _ = std::fs::create_dir_all(&dir);
            let name = format!("crash-{:016x}", weft_backends::stable_hash(&[&data]));
            let path = dir.join(name);
            let _ = std::fs::write(&path, &data);
            out.crashes.push(path);
            if out.crashes.len() >= 10 {
                break;
            }
        }
    }
    out
}
