//! `scripts/import-image`: small generated disk images (a bare ext4 as
//! qcow2, a GPT disk with the file system in partition 1, as qcow2 and raw)
//! become AMI directories that validate with their digests, and bad input
//! (truncated or non-image files, missing kernels) is refused with a message
//! that says what is wrong.
//!
//! Needs mkfs.ext4, debugfs, sfdisk and qemu-img; as root, import-image
//! installs the last two when they are missing, otherwise the tests skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ec2lab_images::{Catalog, KernelImage, MachineImage, Verify};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// False (and a printed SKIPPED line) when the tools are missing and cannot
/// be installed.
fn tools(test: &str) -> bool {
    let missing: Vec<&str> = ["mkfs.ext4", "debugfs", "sfdisk", "qemu-img"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    if missing.is_empty() || is_root() {
        return true;
    }
    println!("SKIPPED {test}: missing {missing:?} and not root (scripts/install-deps)");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 16 MiB ext4 with /etc/hello and an /etc/fstab that names partitions
/// by PARTUUID, as cloud images' do.
fn ext4(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/hello"), "hello from the import test\n").expect("hello");
    std::fs::write(
        tree.join("etc/fstab"),
        "PARTUUID=0a1b / ext4 rw,discard 0 1\nPARTUUID=0a1c /boot/efi vfat defaults 0 0\n",
    )
    .expect("fstab");
    let image = dir.join("fs.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("16M"));
    image
}

/// A 20 MiB GPT disk: partition 1 (Linux root x86-64) at 1 MiB holds `fs`.
fn gpt_disk(dir: &Path, fs: &Path) -> PathBuf {
    let disk = dir.join("disk.raw");
    let f = std::fs::File::create(&disk).expect("disk");
    f.set_len(20 << 20).expect("sparse disk");
    drop(f);
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"label: gpt\nstart=2048, size=32768, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n",
        )
        .expect("write table");
    let out = sfdisk.wait_with_output().expect("sfdisk");
    assert!(out.status.success(), "{out:?}");
    run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]));
    disk
}

fn qcow2(from: &Path) -> PathBuf {
    let to = from.with_extension("qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(from)
        .arg(&to));
    to
}

/// Not a kernel, but shaped like a bzImage ("HdrS" at 0x202).
fn fake_bzimage(dir: &Path) -> PathBuf {
    let mut data = vec![0u8; 4096];
    data[0x202..0x206].copy_from_slice(b"HdrS");
    let path = dir.join("bzImage");
    std::fs::write(&path, data).expect("bzImage");
    path
}

fn import(out: &Path, args: &[&str], image: &Path) -> Output {
    Command::new(repo_root().join("scripts/import-image"))
        .arg("--out")
        .arg(out)
        .args(args)
        .arg(image)
        .output()
        .expect("run scripts/import-image")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn imported(o: &Output) -> PathBuf {
    assert!(o.status.success(), "import-image failed: {}", stderr(o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    PathBuf::from(stdout.lines().last().expect("a result path").trim())
}

fn debugfs_cat(image: &Path, path: &str) -> String {
    let out = run(Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_qcow2_file_system_and_a_kernel_file_become_a_valid_ami_and_aki() {
    if !tools("import_qcow2") {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let images = d.path().join("images");
    let fs = ext4(d.path());
    let image = qcow2(&fs);
    let kernel = fake_bzimage(d.path());
    let o = import(
        &images,
        &[
            "--name",
            "imported-fs",
            "--kernel",
            &kernel.display().to_string(),
            "--default-user",
            "debian",
        ],
        &image,
    );
    let dir = imported(&o);
    assert_eq!(dir, images.join("imported-fs"));
    assert!(stderr(&o).contains("[5/5] manifest"), "{}", stderr(&o));

    let ami = MachineImage::open_with(&dir, Verify::Digest).expect("valid AMI");
    assert_eq!(ami.manifest.kernel, "imported-fs-kernel");
    assert_eq!(ami.manifest.default_user, "debian");
    assert_eq!(ami.manifest.cmdline, "console=ttyS0 root=/dev/vda rw");
    assert_eq!(ami.manifest.initrd, None);
    let root = ami.root_path().expect("root");
    assert_eq!(std::fs::metadata(&root).expect("root").len(), 16 << 20);
    // Same bytes as the file system it came from.
    assert_eq!(
        ec2lab_images::sha256_file(&root).expect("sha"),
        ec2lab_images::sha256_file(&fs).expect("sha")
    );
    let aki = KernelImage::open_with(&images.join("kernels/imported-fs-kernel"), Verify::Digest)
        .expect("valid AKI");
    assert_eq!(aki.manifest.kernel.format, "bzimage");
    let catalog = Catalog::scan(&images).expect("valid catalog");
    assert!(catalog.machine("imported-fs").is_some());

    // A second AMI can name the registered kernel, with an initrd.
    let initrd = d.path().join("initrd.cpio");
    std::fs::write(&initrd, b"070701 pretend").expect("initrd");
    let o = import(
        &images,
        &[
            "--name",
            "second",
            "--kernel",
            "imported-fs-kernel",
            "--initrd",
            &initrd.display().to_string(),
            "--cmdline",
            "console=ttyS0 root=/dev/vda ro quiet",
        ],
        &fs,
    );
    let second = MachineImage::open_with(&imported(&o), Verify::Digest).expect("valid");
    assert_eq!(second.manifest.kernel, "imported-fs-kernel");
    assert_eq!(second.manifest.initrd, Some(PathBuf::from("initrd.img")));
    assert_eq!(
        second.manifest.cmdline,
        "console=ttyS0 root=/dev/vda ro quiet"
    );
    assert_eq!(Catalog::scan(&images).expect("catalog").machines.len(), 2);

    // The directory exists now: no silent replacement.
    let o = import(
        &images,
        &["--name", "second", "--kernel", "imported-fs-kernel"],
        &fs,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("exists (use --force"), "{}", stderr(&o));
}

#[test]
fn the_root_partition_of_a_gpt_disk_is_extracted_and_its_fstab_fixed() {
    if !tools("import_gpt") {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let images = d.path().join("images");
    let fs = ext4(d.path());
    let disk = gpt_disk(d.path(), &fs);
    let kernel = fake_bzimage(d.path());
    let k = kernel.display().to_string();
    for (name, image) in [("gpt-qcow2", qcow2(&disk)), ("gpt-raw", disk.clone())] {
        let o = import(
            &images,
            &["--name", name, "--kernel", &k, "--force"],
            &image,
        );
        let dir = imported(&o);
        assert!(
            stderr(&o).contains("root is partition 1 (16 MiB at byte 1048576)"),
            "{}",
            stderr(&o)
        );
        let ami = MachineImage::open_with(&dir, Verify::Digest).expect("valid AMI");
        let root = ami.root_path().expect("root");
        assert_eq!(std::fs::metadata(&root).expect("root").len(), 16 << 20);
        let fsck = run(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&root));
        assert!(fsck.status.success());
        assert_eq!(
            debugfs_cat(&root, "/etc/hello"),
            "hello from the import test\n"
        );
        let fstab = debugfs_cat(&root, "/etc/fstab");
        assert!(
            fstab
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["/dev/vda", "/"])),
            "{fstab}"
        );
        assert!(
            fstab.contains("# ec2lab import-image: no partitions on ec2lab volumes: PARTUUID=0a1c"),
            "{fstab}"
        );
    }
    // Each import registered its own kernel image (NAME-kernel).
    let catalog = Catalog::scan(&images).expect("catalog");
    assert_eq!(catalog.kernels.len(), 2, "one kernel per AMI name");
}

#[test]
fn bad_inputs_are_refused_with_what_is_wrong() {
    if !tools("import_bad_inputs") {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let images = d.path().join("images");
    let fs = ext4(d.path());
    let disk = gpt_disk(d.path(), &fs);
    let good = qcow2(&disk);
    let kernel = fake_bzimage(d.path());
    let k = kernel.display().to_string();
    let with_kernel = ["--name", "bad", "--kernel", k.as_str()];

    let truncated = d.path().join("truncated.qcow2");
    let bytes = std::fs::read(&good).expect("qcow2");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("truncate");
    let short_raw = d.path().join("short.raw");
    std::fs::write(
        &short_raw,
        &std::fs::read(&disk).expect("disk")[..10_000_000],
    )
    .expect("short raw");
    let short_fs = d.path().join("short.ext4");
    std::fs::write(&short_fs, &std::fs::read(&fs).expect("fs")[..8_000_000]).expect("short fs");
    let not_image = d.path().join("notes.img");
    std::fs::write(&not_image, "these are notes, not a disk\n".repeat(100)).expect("notes");
    let not_kernel = d.path().join("vmlinux");
    std::fs::write(&not_kernel, "not a kernel").expect("not a kernel");

    let cases: Vec<(&str, Vec<&str>, PathBuf, &str)> = vec![
        (
            "truncated qcow2",
            with_kernel.to_vec(),
            truncated.clone(),
            "corrupt or truncated qcow2",
        ),
        (
            "truncated partitioned raw",
            with_kernel.to_vec(),
            short_raw,
            "describes a 20971520-byte disk but the image is only 10000000 bytes (truncated?)",
        ),
        (
            "truncated file system",
            with_kernel.to_vec(),
            short_fs,
            "file system has errors (corrupt or truncated image)",
        ),
        (
            "not an image",
            with_kernel.to_vec(),
            not_image,
            "neither a partition table nor a file system",
        ),
        (
            "missing image",
            with_kernel.to_vec(),
            d.path().join("nope.qcow2"),
            "nope.qcow2: no such file",
        ),
        (
            "missing kernel image",
            vec!["--name", "bad", "--kernel", "ec2lab-9.9-nope"],
            good.clone(),
            "no kernel image 'ec2lab-9.9-nope' in",
        ),
        (
            "missing kernel file",
            vec!["--name", "bad", "--kernel", "/nonexistent/vmlinux"],
            good.clone(),
            "--kernel /nonexistent/vmlinux: no such file",
        ),
        (
            "not a kernel",
            vec![
                "--name",
                "bad",
                "--kernel",
                not_kernel.to_str().expect("utf-8"),
            ],
            good.clone(),
            "neither an ELF vmlinux nor a bzImage",
        ),
        (
            "bad name",
            vec!["--name", "bad|name", "--kernel", k.as_str()],
            good.clone(),
            "is not a valid image name",
        ),
    ];
    for (what, args, image, expected) in cases {
        let o = import(&images, &args, &image);
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(
            e.contains(expected),
            "{what}: expected {expected:?} in:\n{e}"
        );
        assert!(
            !images.join("bad/manifest.json").exists(),
            "{what}: left an image behind"
        );
    }
    // Nothing half-made is left in the images directory.
    let leftovers: Vec<_> = std::fs::read_dir(&images)
        .expect("images dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A manifest that lies about the imported file is caught.
    let dir = imported(&import(&images, &with_kernel, &good));
    let root = dir.join("root.img");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&root)
        .expect("root");
    f.set_len(4096).expect("truncate");
    let e = MachineImage::open(&dir).expect_err("truncated").to_string();
    assert!(e.contains("root.img is 4096 bytes but"), "{e}");
}
