//! `ec2lab`: the control-plane daemon (`ec2lab serve`), its set-up
//! (`ec2lab init`), and a thin client of the same EC2 API for the common
//! verbs, so a first instance needs no aws CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use ec2lab_control::api::sigv4;
use ec2lab_control::client::{Client, ClientError};
use ec2lab_control::config::{self, Credentials};
use ec2lab_control::daemon::{self, ServeOptions};
use ec2lab_control::model::status::DEFAULT_CHECKIN_TIMEOUT;

/// ec2lab: the EC2 model on one Linux machine with KVM.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Data directory (database, instances, credentials).
    #[arg(long, global = true, env = "EC2LAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The API endpoint the client commands talk to.
    #[arg(
        long,
        global = true,
        env = "EC2LAB_ENDPOINT",
        default_value = "http://127.0.0.1:8787"
    )]
    endpoint: String,
    /// Output format of the client commands, as in the aws CLI.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Json,
    Table,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory and API credentials; print the aws CLI settings.
    Init,
    /// Serve the EC2 API (state in SQLite under the data directory).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: std::net::SocketAddr,
        /// Images directory (scripts/build-images output).
        #[arg(long, env = "EC2LAB_IMAGES")]
        images: Option<PathBuf>,
        /// The ec2lab-vmm binary (default: next to this one).
        #[arg(long)]
        vmm: Option<PathBuf>,
        /// How long a guest's agent has, from its VMM's start, to check in
        /// over vsock before DescribeInstanceStatus reports the instance
        /// status `impaired` (e.g. 10m, 90s).
        #[arg(long, default_value_t = DEFAULT_CHECKIN_TIMEOUT.into())]
        checkin_timeout: humantime::Duration,
        /// How long a guest may run kernel code without any exit to its VMM
        /// before the instance status check reports it `impaired` (a hung
        /// kernel); default: the VMM's, 5 minutes.
        #[arg(long)]
        stall_timeout: Option<humantime::Duration>,
        /// The dnsmasq binary that serves each VPC's DHCP and DNS inside
        /// its namespace (Debian: dnsmasq-base).
        #[arg(long, default_value = "dnsmasq")]
        dnsmasq: PathBuf,
        /// The network namespace every VPC's internet gateway leads to
        /// ("the internet" of the lab). Default: one ec2lab makes and
        /// owns, `ec2lab-uplink`; a name given here must exist.
        #[arg(long, value_parser = parse_netns_name, conflicts_with = "uplink")]
        uplink_netns: Option<String>,
        /// `--uplink host`: a workstation's opt-in to route the public pool
        /// on the host itself (a bridge `inet0` with the pool's first
        /// address, IPv4 forwarding on) and masquerade the pool out of the
        /// host's other links, so `ssh ec2-user@<PublicIpAddress>` works from
        /// the host and instances reach what the host reaches. Changes the
        /// host's routes and firewall; off by default.
        #[arg(long, value_parser = ["host"])]
        uplink: Option<String>,
        /// The block public IPv4 addresses come from; its first address is
        /// the internet gateways' far side.
        #[arg(long, default_value = "198.51.100.0/24", value_parser = parse_pool)]
        public_pool: ec2lab_control::model::vpc::Cidr,
        /// Where each VPC's DNS sends names outside the VPC: ADDRESS or
        /// ADDRESS:PORT, repeated to try several in order, or `none` (only
        /// the VPC's own names resolve). Default: the name servers of
        /// /etc/resolv.conf, as the host resolves.
        #[arg(long = "dns-upstream", value_parser = parse_upstream)]
        dns_upstreams: Vec<Upstream>,
        /// Loopback port forwards: each public address in use is reachable
        /// at 127.0.0.1:(BASE + its offset in the public pool) → port 22,
        /// listed in <data-dir>/forwards; 0 opens none.
        #[arg(long, default_value_t = ec2lab_control::network::forwards::DEFAULT_BASE)]
        forward_base: u16,
        /// Boot instances with at most this much memory (MiB) when their
        /// kernel plugs virtio-mem memory, and plug the rest once the
        /// guest's agent checks in; 0 boots with all of it. Default: 128 on
        /// hosts that emulate the guest kernel (where a kernel takes ~21 s
        /// per GiB to initialise memory), 0 elsewhere.
        #[arg(long)]
        boot_memory_mib: Option<u64>,
    },
    /// Launch instances and wait until they run.
    Run {
        /// Image name (lab-minimal) or id (ami-...).
        #[arg(long, default_value = "lab-minimal")]
        image: String,
        /// Instance type.
        #[arg(long = "type", default_value = "t2.micro")]
        instance_type: String,
        /// Key pair name.
        #[arg(long)]
        key: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// A user data file.
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// The Name tag.
        #[arg(long)]
        name: Option<String>,
        /// Return at once instead of waiting for running.
        #[arg(long)]
        no_wait: bool,
    },
    /// List instances.
    Ls,
    /// Print an instance's serial console.
    Console { instance_id: String },
    /// Stop instances (and wait).
    Stop {
        instance_ids: Vec<String>,
        /// Do not give the guest time to shut down.
        #[arg(long)]
        force: bool,
        /// Hibernate: save the memory so that `start` resumes the running
        /// processes (the instance needs HibernationOptions at launch).
        #[arg(long, conflicts_with = "force")]
        hibernate: bool,
    },
    /// Start stopped instances (and wait).
    Start { instance_ids: Vec<String> },
    /// Reboot instances.
    Reboot { instance_ids: Vec<String> },
    /// Terminate instances (and wait).
    Terminate { instance_ids: Vec<String> },
    /// SSH to an instance. As root: to its private address from inside its
    /// VPC (the VPC's router namespace); its security groups must allow
    /// port 22 from the VPC, as they would for a bastion host. Otherwise:
    /// to its public address through the daemon's loopback forward (port
    /// 22 must be open to the internet).
    Ssh {
        instance_id: String,
        /// The private key (e.g. the .pem CreateKeyPair gave).
        #[arg(short = 'i', long)]
        identity: Option<PathBuf>,
        /// The guest user.
        #[arg(short = 'l', long, default_value = "ec2-user")]
        user: String,
        /// More arguments for ssh (after --): options, or a command.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Open a root shell in a running instance over vsock, like Session
    /// Manager: no network, no open port, no key (needs root on this
    /// host). With a command after --, run it instead, print its output
    /// and exit with its status.
    Connect {
        instance_id: String,
        /// The command and its arguments (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the security group rules of an instance's VPC as ec2lab
    /// renders them from the database, then as the kernel holds them now
    /// (nft, in the VPC's namespace; needs root).
    Rules { instance_id: String },
    /// Test-only: store COUNT running instance records without VMMs in the
    /// data directory's database (for `scripts/bench api`). Run it after
    /// `ec2lab serve` has started, which would otherwise reconcile them.
    #[command(hide = true)]
    BenchSeed {
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

fn main() -> ExitCode {
    // Everything the lab writes (database, user data, keys, root volumes,
    // sockets, and what the VMMs it starts write) is the lab's alone.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("EC2LAB_LOG", "info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir);
    let result = match cli.command {
        Command::Init => init(&data_dir),
        Command::Serve {
            listen,
            images,
            vmm,
            checkin_timeout,
            stall_timeout,
            dnsmasq,
            uplink_netns,
            uplink,
            public_pool,
            dns_upstreams,
            forward_base,
            boot_memory_mib,
        } => serve(ServeOptions {
            data_dir,
            images_dir: images.unwrap_or_else(config::default_images_dir),
            vmm: vmm.unwrap_or_else(default_vmm),
            listen,
            checkin_timeout: checkin_timeout.into(),
            stall_timeout: stall_timeout.map(Into::into),
            dnsmasq,
            uplink: match (uplink, uplink_netns) {
                (Some(_), _) => ec2lab_control::network::uplink::Uplink::host(
                    ec2lab_control::network::uplink::HOST_NAMESPACE,
                    public_pool,
                ),
                (None, Some(namespace)) => ec2lab_control::network::uplink::Uplink {
                    owned: false,
                    host: false,
                    namespace,
                    pool: public_pool,
                },
                (None, None) => ec2lab_control::network::uplink::Uplink {
                    pool: public_pool,
                    ..ec2lab_control::network::uplink::Uplink::owned_default()
                },
            },
            dns_upstreams: dns_upstreams_or_host(dns_upstreams),
            forward_base,
            boot_memory_mib: boot_memory_mib
                .map_or_else(ec2lab_control::lifecycle::default_boot_memory_mib, |mib| {
                    (mib > 0).then_some(mib)
                }),
        }),
        Command::BenchSeed { count } => bench_seed(&data_dir, count),
        Command::Rules { ref instance_id } => print_rules(&data_dir, instance_id),
        ref command => client(&cli, &data_dir, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ec2lab: {message}");
            ExitCode::FAILURE
        }
    }
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ec2lab-vmm")))
        .unwrap_or_else(|| PathBuf::from("ec2lab-vmm"))
}

fn init(data_dir: &std::path::Path) -> Result<(), String> {
    let (creds, created) =
        Credentials::load_or_create(data_dir, "us-east-1").map_err(|e| e.to_string())?;
    if created {
        eprintln!("ec2lab: created {}", data_dir.display());
    }
    println!("{}", creds.exports());
    Ok(())
}

fn bench_seed(data_dir: &std::path::Path, count: usize) -> Result<(), String> {
    let db =
        ec2lab_control::db::Db::open(&data_dir.join("ec2lab.db")).map_err(|e| e.to_string())?;
    let ids = db
        .bulk_insert_for_bench(count, time::OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    println!("{} instance records stored", ids.len());
    Ok(())
}

fn serve(options: ServeOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(daemon::serve(options))
        .map_err(|e| e.to_string())
}

/// Credentials from the environment (as the aws CLI) or the data directory.
/// `ec2lab rules`: reads the lab's database directly (the daemon keeps
/// serving; SQLite lets a reader in) and asks nft in the VPC's namespace.
fn print_rules(data_dir: &std::path::Path, instance_id: &str) -> Result<(), String> {
    use ec2lab_control::network::{tap_name, Network};
    let db =
        ec2lab_control::db::Db::open(&data_dir.join("ec2lab.db")).map_err(|e| e.to_string())?;
    let instance = db.get_instance(instance_id).map_err(|e| e.to_string())?;
    let Some(primary) = instance.network_interfaces.first() else {
        return Err(format!("{instance_id} has no network interface"));
    };
    // Only rendered and read here, never applied: the uplink's name and
    // pool do not change the text (the NAT pairs come from the database).
    let network = Network::new(data_dir.join("network"), "dnsmasq".into())
        .with_uplink(ec2lab_control::network::uplink::Uplink::owned_default());
    let (rendered, live) = network
        .rules_of(&db, &primary.vpc_id)
        .map_err(|e| e.to_string())?;
    for eni in &instance.network_interfaces {
        let groups: Vec<&str> = eni.groups.iter().map(|g| g.group_id.as_str()).collect();
        println!(
            "# {instance_id} {} {} tap {} groups {}",
            eni.id,
            eni.private_ip_address,
            tap_name(&eni.id),
            groups.join(",")
        );
    }
    println!("# rendered from the database:\n{rendered}");
    match live {
        Some(live) => println!(
            "# live in {}:\n{live}",
            ec2lab_control::network::namespace_name(&primary.vpc_id)
        ),
        None => println!("# not live: no instance of {} holds a tap", primary.vpc_id),
    }
    Ok(())
}

/// `--uplink-netns`: a name `ip netns` would make (it becomes a path under
/// /run/netns, so no slashes and no dot-names).
fn parse_netns_name(text: &str) -> Result<String, String> {
    let plain = !text.is_empty()
        && text.len() <= 64
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is not a network namespace name"))
    }
}

/// One `--dns-upstream`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Upstream {
    /// A name server.
    At(std::net::SocketAddr),
    /// No forwarding.
    None,
}

/// `--dns-upstream`: `none`, an address (port 53), or address and port.
fn parse_upstream(text: &str) -> Result<Upstream, String> {
    if text == "none" {
        return Ok(Upstream::None);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(Upstream::At((ip, 53).into()));
    }
    text.parse()
        .map(Upstream::At)
        .map_err(|_| format!("{text:?} is not an address, ADDRESS:PORT or none"))
}

/// The upstreams named, or the host's (its resolv.conf) when none was.
fn dns_upstreams_or_host(named: Vec<Upstream>) -> Vec<std::net::SocketAddr> {
    use ec2lab_control::network::dns_forward;
    if named.contains(&Upstream::None) {
        return Vec::new();
    }
    if !named.is_empty() {
        return named
            .into_iter()
            .filter_map(|u| match u {
                Upstream::At(at) => Some(at),
                Upstream::None => None,
            })
            .collect();
    }
    match dns_forward::upstreams_from(std::path::Path::new("/etc/resolv.conf")) {
        Ok(found) => found,
        Err(e) => {
            log::warn!("{e}: names outside a VPC will not resolve (see --dns-upstream)");
            Vec::new()
        }
    }
}

/// `--public-pool`: a block with room for a gateway and some addresses.
fn parse_pool(text: &str) -> Result<ec2lab_control::model::vpc::Cidr, String> {
    let cidr = ec2lab_control::model::vpc::Cidr::parse(text)
        .ok_or_else(|| format!("{text:?} is not a block like 198.51.100.0/24"))?;
    if !(8..=29).contains(&cidr.prefix) {
        return Err(format!("{text}: the pool must be between /8 and /29"));
    }
    Ok(cidr)
}

fn credentials(data_dir: &std::path::Path) -> Result<(sigv4::Credentials, String), String> {
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        let region = std::env::var("AWS_DEFAULT_REGION").unwrap_or_else(|_| "us-east-1".into());
        return Ok((
            sigv4::Credentials {
                access_key_id: id,
                secret_access_key: secret,
            },
            region,
        ));
    }
    let c = Credentials::load(data_dir).map_err(|e| e.to_string())?;
    Ok((
        sigv4::Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
        },
        c.region,
    ))
}

fn ids(prefix: &str, list: &[String]) -> Vec<(String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, id)| (format!("{prefix}.{}", i + 1), id.clone()))
        .collect()
}

fn client(cli: &Cli, data_dir: &std::path::Path, command: &Command) -> Result<(), String> {
    let (creds, region) = credentials(data_dir)?;
    let api = Client::new(&cli.endpoint, creds, &region).map_err(|e| e.to_string())?;
    let call = |action: &str, params: Vec<(String, String)>| {
        api.call(action, &params)
            .map_err(|e: ClientError| e.to_string())
    };
    match command {
        Command::Run {
            image,
            instance_type,
            key,
            count,
            user_data,
            name,
            no_wait,
        } => {
            let image_id = if image.starts_with("ami-") {
                image.clone()
            } else {
                let found = call(
                    "DescribeImages",
                    vec![
                        ("Filter.1.Name".into(), "name".into()),
                        ("Filter.1.Value.1".into(), image.clone()),
                    ],
                )?;
                found["Images"][0]["ImageId"]
                    .as_str()
                    .ok_or_else(|| format!("no image named {image} (run scripts/build-images)"))?
                    .to_string()
            };
            let mut params = vec![
                ("ImageId".to_string(), image_id),
                ("InstanceType".to_string(), instance_type.clone()),
                ("MinCount".to_string(), count.to_string()),
                ("MaxCount".to_string(), count.to_string()),
            ];
            if let Some(k) = key {
                params.push(("KeyName".into(), k.clone()));
            }
            if let Some(path) = user_data {
                let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                params.push((
                    "UserData".into(),
                    base64::engine::general_purpose::STANDARD.encode(data),
                ));
            }
            if let Some(n) = name {
                params.extend([
                    ("TagSpecification.1.ResourceType".into(), "instance".into()),
                    ("TagSpecification.1.Tag.1.Key".into(), "Name".into()),
                    ("TagSpecification.1.Tag.1.Value".into(), n.clone()),
                ]);
            }
            let out = call("RunInstances", params)?;
            let launched: Vec<String> = out["Instances"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["InstanceId"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !no_wait {
                wait_for(&call, &launched, "running")?;
            }
            print_instances(cli.output, &call, &launched)
        }
        Command::Ls => print_instances(cli.output, &call, &[]),
        Command::Ssh {
            instance_id,
            identity,
            user,
            args,
        } => {
            let instance = &one_instance(&call, instance_id)?;
            // SAFETY: geteuid only reads the process's credentials.
            if unsafe { libc::geteuid() } != 0 {
                // No way into the VPC's namespace: through the loopback
                // forward of the public address, as from the internet.
                // The client's JSON keeps the wire's element names: the
                // public address is `ipAddress` in EC2's XML.
                let public = instance["IpAddress"].as_str().ok_or_else(|| {
                    format!("{instance_id} has no public address (without root, ssh goes through its loopback forward)")
                })?;
                let port = forward_port(data_dir, public)?;
                return ssh_exec(
                    None,
                    "127.0.0.1",
                    Some(port),
                    identity.as_deref(),
                    user,
                    args,
                );
            }
            let (Some(ip), Some(vpc_id)) = (
                instance["PrivateIpAddress"].as_str(),
                instance["VpcId"].as_str(),
            ) else {
                return Err(format!("{instance_id} has no private address in a VPC"));
            };
            ssh_in_vpc(vpc_id, ip, identity.as_deref(), user, args)
        }
        Command::Connect {
            instance_id,
            command,
        } => {
            let instance = &one_instance(&call, instance_id)?;
            let state = instance["InstanceState"]["Name"]
                .as_str()
                .unwrap_or("unknown");
            // The id the API answered with names the directory, never the
            // caller's text.
            let Some(id) = instance["InstanceId"]
                .as_str()
                .filter(|id| id.len() > 2 && id.starts_with("i-"))
                .filter(|id| id[2..].bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                return Err(format!("{instance_id}: no such instance"));
            };
            if state != "running" {
                return Err(format!(
                    "{id} is {state}; a session needs a running instance"
                ));
            }
            let vsock = ec2lab_control::supervisor::InstanceFiles {
                dir: data_dir.join("instances").join(id),
            }
            .vsock();
            let status =
                ec2lab_control::connect::run(&vsock, command).map_err(|e| e.to_string())?;
            std::process::exit(status.clamp(0, 255));
        }
        Command::Console { instance_id } => {
            let out = call(
                "GetConsoleOutput",
                vec![("InstanceId".into(), instance_id.clone())],
            )?;
            let text = out["Output"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| e.to_string())?;
            print!("{}", String::from_utf8_lossy(&bytes));
            Ok(())
        }
        Command::Stop {
            instance_ids,
            force,
            hibernate,
        } => {
            let mut p = ids("InstanceId", instance_ids);
            if *force {
                p.push(("Force".into(), "true".into()));
            }
            if *hibernate {
                p.push(("Hibernate".into(), "true".into()));
            }
            call("StopInstances", p)?;
            wait_for(&call, instance_ids, "stopped")?;
            print_instances(cli.output, &call, instance_ids)
        }
        Command::Start { instance_ids } => {
            call("StartInstances", ids("InstanceId", instance_ids))?;
            wait_for(&call, instance_ids, "running")?;
            print_instances(cli.output, &call, instance_ids)
        }
        Command::Reboot { instance_ids } => {
            call("RebootInstances", ids("InstanceId", instance_ids))?;
            print_instances(cli.output, &call, instance_ids)
        }
        Command::Terminate { instance_ids } => {
            call("TerminateInstances", ids("InstanceId", instance_ids))?;
            wait_for(&call, instance_ids, "terminated")?;
            print_instances(cli.output, &call, instance_ids)
        }
        Command::Init
        | Command::Serve { .. }
        | Command::BenchSeed { .. }
        | Command::Rules { .. } => Ok(()),
    }
}

type Call<'a> = dyn Fn(&str, Vec<(String, String)>) -> Result<serde_json::Value, String> + 'a;

fn instances(call: &Call<'_>, only: &[String]) -> Result<Vec<serde_json::Value>, String> {
    let out = call("DescribeInstances", ids("InstanceId", only))?;
    Ok(out["Reservations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["Instances"].as_array().cloned().unwrap_or_default())
        .collect())
}

/// The one instance `id` names, as DescribeInstances describes it.
fn one_instance(call: &Call<'_>, id: &str) -> Result<serde_json::Value, String> {
    instances(call, &[id.to_string()])?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{id}: no such instance"))
}

/// Waits, with a spinner, until every instance is in `state`.
fn wait_for(call: &Call<'_>, ids: &[String], state: &str) -> Result<(), String> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    loop {
        let now = instances(call, ids)?;
        let states: Vec<String> = now
            .iter()
            .map(|i| {
                i["InstanceState"]["Name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        spinner.set_message(format!(
            "{} → {state}: {} ({:.0} s)",
            ids.join(" "),
            states.join(" "),
            started.elapsed().as_secs_f64()
        ));
        if states.iter().all(|s| s == state) {
            spinner.finish_and_clear();
            return Ok(());
        }
        if state == "running" && states.iter().any(|s| s == "stopped" || s == "terminated") {
            spinner.finish_and_clear();
            return Err(format!("instances ended up {}", states.join(" ")));
        }
        if started.elapsed() > Duration::from_secs(900) {
            spinner.finish_and_clear();
            return Err(format!("still {} after 15 minutes", states.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_instances(output: Output, call: &Call<'_>, only: &[String]) -> Result<(), String> {
    let list = instances(call, only)?;
    let field = |i: &serde_json::Value, path: &[&str]| {
        let mut v = i;
        for p in path {
            v = &v[*p];
        }
        v.as_str().unwrap_or("-").to_string()
    };
    let name = |i: &serde_json::Value| {
        i["Tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["Key"] == "Name")
            .and_then(|t| t["Value"].as_str())
            .unwrap_or("-")
            .to_string()
    };
    match output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
        }
        Output::Text => {
            for i in &list {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    field(i, &["InstanceId"]),
                    field(i, &["InstanceState", "Name"]),
                    field(i, &["InstanceType"]),
                    field(i, &["ImageId"]),
                    name(i)
                );
            }
        }
        Output::Table => {
            println!(
                "{:<21} {:<14} {:<10} {:<21} {:<24} NAME",
                "INSTANCE", "STATE", "TYPE", "IMAGE", "LAUNCHED"
            );
            for i in &list {
                println!(
                    "{:<21} {:<14} {:<10} {:<21} {:<24} {}",
                    field(i, &["InstanceId"]),
                    field(i, &["InstanceState", "Name"]),
                    field(i, &["InstanceType"]),
                    field(i, &["ImageId"]),
                    field(i, &["LaunchTime"]),
                    name(i)
                );
            }
        }
    }
    Ok(())
}

/// Replaces this process with `ssh user@ip` running inside VPC `vpc_id`'s
/// namespace, where the instance's private address is routed: the host's
/// own namespace has no route to any VPC, on purpose.
///
/// The guest's host key is not checked (a fresh instance reuses addresses
/// and has a new key each launch, and nothing yet carries its fingerprint
/// to the host); the connection stays inside the lab's namespaces.
fn ssh_in_vpc(
    vpc_id: &str,
    ip: &str,
    identity: Option<&std::path::Path>,
    user: &str,
    args: &[String],
) -> Result<(), String> {
    let ns = ec2lab_control::network::namespace_name(vpc_id);
    let netns = ec2lab_control::network::netns::open(&ns)
        .map_err(|e| format!("{e} (is the instance running, and is this run as root?)"))?;
    ssh_exec(Some((&ns, &netns)), ip, None, identity, user, args)
}

/// The loopback port the daemon forwards to `public`:22, from its table
/// `<data>/forwards`.
fn forward_port(data_dir: &std::path::Path, public: &str) -> Result<String, String> {
    let path = data_dir.join("forwards");
    let table = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (the daemon's table of loopback forwards; where it cannot be read, \
             root can look up the port of {public} there, and `ssh -p PORT user@127.0.0.1` \
             works for anyone)",
            path.display()
        )
    })?;
    let target = format!("{public}:22");
    table
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let from = fields.next()?;
            (fields.next()? == target).then(|| from.rsplit(':').next().map(str::to_string))?
        })
        .ok_or_else(|| format!("no loopback forward to {target} in {}", path.display()))
}

/// Replaces this process with ssh to `user@ip` (on `port`), inside the
/// namespace `ns` when given.
fn ssh_exec(
    ns: Option<(&str, &std::fs::File)>,
    ip: &str,
    port: Option<String>,
    identity: Option<&std::path::Path>,
    user: &str,
    args: &[String],
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut ssh = std::process::Command::new("ssh");
    ssh.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]);
    if let Some(key) = identity {
        ssh.arg("-i").arg(key);
    }
    if let Some(port) = port {
        ssh.args(["-p", &port]);
    }
    ssh.arg(format!("{user}@{ip}")).args(args);
    ec2lab_control::network::netns::exec_in(&mut ssh, ns.map(|(_, f)| f), false);
    let err = ssh.exec();
    let place = ns.map_or_else(String::new, |(name, _)| format!(" in {name}"));
    Err(format!("cannot run ssh{place}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_upstreams_are_addresses_with_an_optional_port_or_none() {
        let at = |s: &str| Upstream::At(s.parse().expect("socket address"));
        assert_eq!(parse_upstream("192.0.2.53"), Ok(at("192.0.2.53:53")));
        assert_eq!(parse_upstream("127.0.0.1:5353"), Ok(at("127.0.0.1:5353")));
        assert_eq!(parse_upstream("2001:db8::1"), Ok(at("[2001:db8::1]:53")));
        assert_eq!(
            parse_upstream("[2001:db8::1]:54"),
            Ok(at("[2001:db8::1]:54"))
        );
        assert_eq!(parse_upstream("none"), Ok(Upstream::None));
        assert!(parse_upstream("dns.example").is_err());
        assert!(parse_upstream("192.0.2.53:99999").is_err());
        let named = vec![at("192.0.2.1:53"), at("192.0.2.2:53")];
        assert_eq!(
            dns_upstreams_or_host(named),
            vec![
                "192.0.2.1:53".parse().expect("a"),
                "192.0.2.2:53".parse().expect("b")
            ]
        );
        assert_eq!(
            dns_upstreams_or_host(vec![at("192.0.2.1:53"), Upstream::None]),
            Vec::new()
        );
    }

    #[test]
    fn ssh_without_root_finds_the_forward_of_the_public_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("forwards"),
            "127.0.0.1:22003 198.51.100.3:22 i-1\n127.0.0.1:22013 198.51.100.13:22 i-2\n",
        )
        .expect("table");
        assert_eq!(
            forward_port(dir.path(), "198.51.100.13"),
            Ok("22013".into())
        );
        assert_eq!(forward_port(dir.path(), "198.51.100.3"), Ok("22003".into()));
        assert!(forward_port(dir.path(), "198.51.100.1").is_err());
    }
}
