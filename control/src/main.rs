//! `ec2lab`: the control-plane daemon (`ec2lab serve`) and a thin client.

fn main() {
    eprintln!("ec2lab: not yet");
    std::process::exit(2);
}
