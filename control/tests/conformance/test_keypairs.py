"""Key pairs through the aws CLI, as the README shows them."""
import os
import subprocess

from conftest import aws, aws_error


def test_create_key_pair_gives_a_pem_that_ssh_keygen_reads(tmp_path):
    pem = aws("create-key-pair", "--key-name", "us-east-kp", "--query", "KeyMaterial", "--output", "text",
              text_output=True)
    path = tmp_path / "us-east-kp.pem"
    path.write_text(pem)
    os.chmod(path, 0o600)
    assert pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert public.stdout.startswith("ssh-rsa ")
    pairs = aws("describe-key-pairs", "--key-names", "us-east-kp")["KeyPairs"]
    assert pairs[0]["KeyName"] == "us-east-kp"
    assert pairs[0]["KeyFingerprint"].count(":") == 19  # SHA-1 of the private key, as EC2 does
    assert "InvalidKeyPair.Duplicate" in aws_error("create-key-pair", "--key-name", "us-east-kp")
    aws("delete-key-pair", "--key-name", "us-east-kp")
    assert "InvalidKeyPair.NotFound" in aws_error("describe-key-pairs", "--key-names", "us-east-kp")


def test_ed25519_and_imported_keys(tmp_path):
    made = aws("create-key-pair", "--key-name", "ed", "--key-type", "ed25519")
    assert made["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    imported = aws("import-key-pair", "--key-name", "imported",
                   "--public-key-material", f"fileb://{tmp_path / 'k.pub'}")
    listed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True,
                            check=True).stdout.split()[1]
    assert imported["KeyFingerprint"].rstrip("=") == listed.removeprefix("SHA256:").rstrip("=")
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-dss AAAAB3NzaC1kc3MAAACBAP nobody\n")
    assert "InvalidKey.Format" in aws_error("import-key-pair", "--key-name", "bad",
                                            "--public-key-material", f"fileb://{bad}")
    for name in ("ed", "imported"):
        aws("delete-key-pair", "--key-name", name)
