//! Fuzzing the request path before any action runs: the SigV4 verifier and
//! the Query parameter parser, on requests botocore signed
//! (`fixtures/sigv4_vectors.json`, the seed corpus) and mutated at random.
//!
//! Two properties, on every input:
//! - nothing panics, whatever the bytes (the verifier and the parser see
//!   every request before it is authenticated);
//! - a mutated request that still verifies means exactly what the signed
//!   one meant: its decoded parameters (query and body, as the actions
//!   read them) and its method are the original's. So no change of the
//!   bytes an action acts on survives the signature check, including
//!   encodings that sign alike but decode differently.
//!
//! A stable driver (no nightly toolchain needed): a fixed-seed xorshift
//! stream chooses the case, the field and the mutation, so a failure is
//! reproducible from the seed and iteration it prints. CI runs 20,000
//! inputs; `EC2LAB_FUZZ_ITERATIONS=1000000 cargo test --release -p ec2lab
//! --test fuzz_requests` is the long run, and `EC2LAB_FUZZ_SEED` picks
//! another stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ec2lab_control::api::query::Params;
use ec2lab_control::api::sigv4::{verify, Credentials, Request};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    access_key_id: String,
    secret_access_key: String,
    cases: Vec<Case>,
}

#[derive(Clone, Deserialize)]
struct Case {
    name: String,
    region: String,
    service: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// A request as bytes the mutations may break (the body need not be UTF-8).
#[derive(Clone)]
struct Input {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Input {
    fn request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// What an action would act on: every decoded parameter, in order.
    fn meaning(&self) -> Vec<(String, String)> {
        Params::from_request(Some(&self.query), &self.body)
            .pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// Xorshift64*: small, fast, and the same stream on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the parsers: separators, escapes, encodings.
const SPECIAL: &[&[u8]] = &[
    b"%",
    b"%2B",
    b"+",
    b"%20",
    b"=",
    b"&",
    b"\r\n",
    b"\0",
    b"%00",
    b"%ZZ",
    b";",
    b"\xff",
    b"Action=",
    b"Version=2016-11-15",
    b"&Action=TerminateInstances",
    b"InstanceId.1=",
    b"Filter.1.Name=",
    b".member.",
    b"X-Amz-Signature=",
    b"UNSIGNED-PAYLOAD",
    b"%25",
    b"\xe2\x80\xae",
    b"..",
    b"/",
];

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, donor: &[u8]) {
    let at = rng.below(bytes.len() + 1);
    match rng.below(7) {
        0 if !bytes.is_empty() => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        1 if !bytes.is_empty() => {
            let end = (at + 1 + rng.below(16)).min(bytes.len());
            bytes.drain(at.min(end)..end);
        }
        2 => {
            let special = SPECIAL[rng.below(SPECIAL.len())];
            bytes.splice(at..at, special.iter().copied());
        }
        3 if !bytes.is_empty() => {
            let i = rng.below(bytes.len());
            bytes[i] = rng.next() as u8;
        }
        4 if !donor.is_empty() => {
            let from = rng.below(donor.len());
            let len = rng.below(donor.len() - from + 1);
            bytes.splice(at..at, donor[from..from + len].iter().copied());
        }
        5 => bytes.truncate(at),
        _ => {
            let repeat = bytes[at..].iter().take(8).copied().collect::<Vec<_>>();
            bytes.splice(at..at, repeat);
        }
    }
}

fn mutate_string(rng: &mut Rng, s: &mut String, donor: &str) {
    let mut bytes = std::mem::take(s).into_bytes();
    mutate_bytes(rng, &mut bytes, donor.as_bytes());
    *s = String::from_utf8_lossy(&bytes).into_owned();
}

/// One to three mutations anywhere in the request.
fn mutate(rng: &mut Rng, input: &mut Input, donor: &Input) {
    for _ in 0..=rng.below(3) {
        match rng.below(8) {
            0 | 1 => mutate_bytes(rng, &mut input.body, &donor.body),
            2 => mutate_string(rng, &mut input.query, &donor.query),
            3 => mutate_string(rng, &mut input.method, &donor.method),
            4 => mutate_string(rng, &mut input.path, &donor.path),
            5 if !input.headers.is_empty() => {
                let i = rng.below(input.headers.len());
                let other = donor.headers.get(i).map_or("", |(_, v)| v.as_str());
                mutate_string(rng, &mut input.headers[i].1, other);
            }
            6 if !input.headers.is_empty() => {
                let i = rng.below(input.headers.len());
                match rng.below(3) {
                    0 => {
                        input.headers.remove(i);
                    }
                    1 => {
                        let copy = input.headers[i].clone();
                        input.headers.push(copy);
                    }
                    _ => input.headers[i].0 = input.headers[i].0.to_ascii_uppercase(),
                }
            }
            _ => {
                let name =
                    ["content-type", "x-amz-content-sha256", "host", "x-amz-date"][rng.below(4)];
                let value = String::from_utf8_lossy(SPECIAL[rng.below(SPECIAL.len())]);
                input.headers.push((name.to_string(), value.into_owned()));
            }
        }
    }
}

fn iterations() -> u64 {
    std::env::var("EC2LAB_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn mutated_signed_requests_never_panic_and_never_verify_with_another_meaning() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigv4_vectors.json"),
    )
    .expect("fixture sigv4_vectors.json");
    let vectors: Vectors = serde_json::from_str(&text).expect("fixture shape");
    let lookup = |akid: &str| {
        (akid == vectors.access_key_id).then(|| Credentials {
            access_key_id: akid.to_owned(),
            secret_access_key: vectors.secret_access_key.clone(),
        })
    };
    // The instant botocore's clock was frozen at, plus a little.
    let now = UNIX_EPOCH + Duration::from_secs(1_795_608_005);
    let seeds: Vec<(Case, Input)> = vectors
        .cases
        .iter()
        .map(|c| {
            let input = Input {
                method: c.method.clone(),
                path: c.path.clone(),
                query: c.query.clone(),
                headers: c.headers.clone(),
                body: c.body.clone().into_bytes(),
            };
            (c.clone(), input)
        })
        .collect();
    // The seeds themselves verify: the property below is not vacuous.
    for (case, input) in &seeds {
        let ok = verify(&input.request(), &lookup, now, &case.region, &case.service);
        assert!(ok.is_ok(), "seed {} does not verify: {ok:?}", case.name);
    }

    let seed = std::env::var("EC2LAB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0ec2_1ab0_f022_u64);
    let mut rng = Rng(seed | 1);
    let total = iterations();
    let started = SystemTime::now();
    let (mut verified, mut refused) = (0u64, 0u64);
    for n in 0..total {
        let (case, original) = &seeds[rng.below(seeds.len())];
        let donor = &seeds[rng.below(seeds.len())].1;
        let mut input = original.clone();
        mutate(&mut rng, &mut input, donor);
        // The parser on every input, signed or not, with the accessors the
        // actions use.
        let params = Params::from_request(Some(&input.query), &input.body);
        let _ = (params.action(), params.version(), params.dry_run());
        let _ = (params.list("InstanceId"), params.structs("Filter"));
        let _ = params.int_in("MaxCount", 1, 1000);
        match verify(&input.request(), &lookup, now, &case.region, &case.service) {
            Ok(_) => {
                verified += 1;
                assert!(
                    input.method == original.method && input.meaning() == original.meaning(),
                    "seed {seed:#x}, iteration {n}: a mutated {} verified with another \
                     meaning:\n method {:?}\n query {:?}\n body {:?}",
                    case.name,
                    input.method,
                    input.query,
                    String::from_utf8_lossy(&input.body)
                );
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "fuzz_requests: {total} inputs in {:.1} s (seed {seed:#x}): {refused} refused, \
         {verified} still verified with the same meaning",
        started.elapsed().unwrap_or_default().as_secs_f64()
    );
}
