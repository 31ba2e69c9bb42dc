//! Writes the seed corpora in `fuzz/corpus/<target>/seed-*` from valid messages, so the
//! fuzzer starts from inputs that reach deep into each parser:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::path::Path;

use foca::Codec;
use prost::Message;
use proto::v1 as pb;
use protocol::evidence::Evidence;
use protocol::{Claim, Digest, Identity, Limits, ProjectId, Registration, UnitId};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)
    };

    // manifest: the README's examples.
    write("manifest", "dir", b"name = \"primes\"\nwasm = \"primes.wasm\"\nreplication = 2\nquorum = 2\nmax_replicas = 5\n\n[limits]\nfuel = 10_000_000_000\nmemory_mb = 64\nwall_seconds = 60\nmax_output_bytes = 1_048_576\nnan_canonicalization = false\n\n[inputs]\ndir = \"inputs\"\n\n[reduce]\nwasm = \"sum.wasm\"\n")?;
    write("manifest", "sweep", b"name = 'primes'\nwasm = 'primes.wasm'\nreplication = 3\nquorum = 2\nadaptive = false\nerror_bound = 0.05\n[inputs]\nsweep = { from = 0, to = 10_000_000, step = 100_000 }\n")?;
    write("manifest", "minimal", b"name='p'\nwasm='m.wasm'\n[inputs]\nsweep={from=-5,to=10,step=3}\n")?;
    write("manifest", "bad-limits", b"name='p'\nwasm='m.wasm'\n[limits]\nfuel=0\n[inputs]\ndir='inputs'\n")?;

    // wire: a selector byte (see fuzz_targets/wire.rs), then the encoded message.
    let alice = Identity::from_seed([1; 32]);
    let bob = Identity::from_seed([2; 32]);
    let claim = Claim::sign_with_salt(&alice, ProjectId(1), UnitId(7), Digest::of(b"42\n"), 1000, [9; 32]);
    let other = Claim::sign_with_salt(&alice, ProjectId(1), UnitId(7), Digest::of(b"43\n"), 1000, [9; 32]);
    let bobs = Claim::sign_with_salt(&bob, ProjectId(1), UnitId(7), Digest::of(b"42\n"), 1000, [3; 32]);
    let wire = |selector: u8, m: &dyn Fn() -> Vec<u8>| [vec![selector], m()].concat();
    write("wire", "claim", &wire(0, &|| pb::Claim::from(&claim).encode_to_vec()))?;
    write("wire", "commitment", &wire(1, &|| pb::Commitment::from(&claim.commitment()).encode_to_vec()))?;
    let mismatch = Evidence::Mismatch(claim.commitment(), other.clone());
    write("wire", "evidence-mismatch", &wire(2, &|| pb::Evidence::from(&mismatch).encode_to_vec()))?;
    let equivocation = Evidence::Equivocation(claim.commitment(), other.commitment());
    write("wire", "evidence-equivocation", &wire(2, &|| pb::Evidence::from(&equivocation).encode_to_vec()))?;
    let project = pb::SubmitProjectRequest {
        name: "primes".into(),
        module: b"\0asm\x01\0\0\0".to_vec(),
        reducer: Vec::new(),
        replication: 2,
        quorum: 2,
        max_replicas: 5,
        fixed_replication: false,
        error_bound: 0.0,
        limits: Some(Limits::default().into()),
        units: vec![
            pb::UnitInput { name: "0".into(), input: b"0 100\n".to_vec(), signature: Vec::new() },
            pb::UnitInput { name: "100".into(), input: b"100 200\n".to_vec(), signature: Vec::new() },
        ],
        manifest: "name = 'primes'\n".into(),
        submitter_key: Vec::new(),
        once: false,
    };
    write("wire", "submit-project-unsigned", &wire(3, &|| project.encode_to_vec()))?;
    let mut signed = protocol::manifest::ProjectSpec::try_from(project.clone())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    signed.sign(&alice);
    let signed = pb::SubmitProjectRequest::from(signed);
    write("wire", "submit-project", &wire(3, &|| signed.encode_to_vec()))?;
    write("wire", "limits", &wire(4, &|| pb::Limits::from(Limits::default()).encode_to_vec()))?;
    let failure = pb::FailureReport {
        public_key: alice.id().0.to_vec(),
        unit_id: 7,
        kind: pb::FailureKind::ExitCode as i32,
        detail: "exit code 3: stderr tail…".into(),
        exit_code: 3,
    };
    write("wire", "failure-report", &wire(5, &|| failure.encode_to_vec()))?;
    let submission = pb::CertificateSubmission {
        unit_id: 7,
        claims: vec![(&claim).into(), (&bobs).into()],
        output: b"42\n".to_vec(),
        submitter_key: alice.id().0.to_vec(),
    };
    write("wire", "certificate", &wire(6, &|| submission.encode_to_vec()))?;
    let dispute = pb::Dispute {
        public_key: bob.id().0.to_vec(),
        unit_id: 7,
        claims: vec![(&other).into(), (&bobs).into()],
    };
    write("wire", "dispute", &wire(7, &|| dispute.encode_to_vec()))?;
    let view = pb::UnitView {
        unit_id: 7,
        commitments: 2,
        reveals: vec![(&claim).into(), (&bobs).into()],
        committed: vec![(&claim.commitment()).into(), (&bobs.commitment()).into()],
    };
    write("wire", "unit-view", &wire(8, &|| view.encode_to_vec()))?;
    let registration = Registration { name: "box", account: "alice", team: "lab", peer_addr: "127.0.0.1:9" };
    let register = pb::RegisterWorkerRequest {
        public_key: alice.id().0.to_vec(),
        name: registration.name.into(),
        peer_addr: registration.peer_addr.into(),
        cores: 2,
        version: "0.1.0".into(),
        signature: alice.sign_registration(&registration).to_vec(),
        account: registration.account.into(),
        team: registration.team.into(),
        platform: "linux-x86_64".into(),
        // sandbox::meter::VERSION (this crate links the sandbox only with a feature).
        fuel_rules: 2,
    };
    write("wire", "register-worker", &wire(9, &|| register.encode_to_vec()))?;

    // reduce: variant 0 (raw bytes) with real framing, variant 1 (records).
    let framed = protocol::reduce::encode([("0", &b"12\n"[..]), ("100", &b"30\n"[..]), ("", &b""[..])]);
    write("reduce", "framed", &[&[0, 0, 0, 0][..], &framed].concat())?;
    write("reduce", "records", &[0xff, 0xff, 0xff, 0xff, 1, b'a', 2, b'4', b'2'])?;

    // claims and board take structured input (`arbitrary`): any bytes decode to some
    // sequence, so a few byte patterns are enough to start from.
    for target in ["claims", "board"] {
        write(target, "zeros", &[0; 64])?;
        write(target, "ramp", &(0..=255).collect::<Vec<u8>>())?;
        write(target, "ones", &[1; 128])?;
    }

    // inspect: tiny hand-assembled modules.
    const HEADER: &[u8] = b"\0asm\x01\0\0\0";
    // A WASI command: `_start` () -> () and one page of memory, both exported.
    let command: Vec<u8> = [
        HEADER,
        &[0x01, 0x04, 0x01, 0x60, 0x00, 0x00], // type section: () -> ()
        &[0x03, 0x02, 0x01, 0x00],             // function section: one func of type 0
        &[0x05, 0x03, 0x01, 0x00, 0x01],       // memory section: min 1 page
        &[0x07, 0x13, 0x02, 0x06],             // export section: 2 exports
        b"_start",
        &[0x00, 0x00, 0x06],
        b"memory",
        &[0x02, 0x00],
        &[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b], // code section: empty body
    ]
    .concat();
    write("inspect", "command", &command)?;
    // The same plus an import from outside the guest ABI (`env::f`).
    let bad_import: Vec<u8> = [
        HEADER,
        &[0x01, 0x04, 0x01, 0x60, 0x00, 0x00],
        &[0x02, 0x09, 0x01, 0x03],
        b"env",
        &[0x01],
        b"f",
        &[0x00, 0x00], // import section: func env::f of type 0
        &[0x03, 0x02, 0x01, 0x00],
        &[0x05, 0x03, 0x01, 0x00, 0x01],
        &[0x07, 0x13, 0x02, 0x06],
        b"_start",
        &[0x00, 0x01, 0x06],
        b"memory",
        &[0x02, 0x00],
        &[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b],
    ]
    .concat();
    write("inspect", "bad-import", &bad_import)?;
    write("inspect", "empty-module", HEADER)?;
    write("inspect", "component", b"\0asm\x0d\0\x01\0")?;

    // abi: host calls for the abicall guest, 13 bytes each (opcode, then a b c as u32 LE).
    let call = |op: u8, a: u32, b: u32, c: u32| -> Vec<u8> {
        [vec![op], a.to_le_bytes().to_vec(), b.to_le_bytes().to_vec(), c.to_le_bytes().to_vec()].concat()
    };
    let errnos = [call(9, 0, 0, 1), call(14, 3, 0, 10), call(2, 1024, 16, 0), call(10, 5, 0, 0), call(18, 4, 0, 0)].concat();
    write("abi", "errnos", &errnos)?;
    write("abi", "checkpoint", &[call(10, 5, 0, 0), call(17, 0, 0, 0), call(9, 0, 0, 1)].concat())?;
    write("abi", "bad-pointer", &call(0x80, 1, 0xffff_fff0, 3))?;
    let every: Vec<u8> = (0..20u8).flat_map(|op| call(op, 1024, 64, 2)).collect();
    write("abi", "every-call", &every)?;

    // membership: mode 0, a datagram the gate admits (from the first member, at its
    // credentialed address, gossiping two more and one forged); mode 1, a genuine
    // credential; other modes, steps. Keys and times as in fuzz_targets/membership.rs.
    let coordinator = Identity::from_seed([200; 32]);
    let t0 = 1_800_000_000_000;
    let member = |n: u8| {
        let id = Identity::from_seed([n; 32]);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(n)));
        let c = protocol::membership::Credential::issue(&coordinator, id.id(), addr, t0);
        gate::SwimId::new(&c, 1)
    };
    let header = foca::Header { src: member(1), src_incarnation: 0, dst: member(7), message: foca::Message::<gate::SwimId>::Gossip };
    let mut payload = Vec::new();
    foca::PostcardCodec.encode_header(&header, &mut payload).expect("header");
    let mut forged = member(4);
    forged.signature = vec![7; 64];
    let gossiped = [member(2), member(3), forged];
    payload.extend_from_slice(&(gossiped.len() as u16).to_be_bytes());
    for m in gossiped {
        foca::PostcardCodec.encode_member(&foca::Member::alive(m), &mut payload).expect("member");
    }
    let datagram = protocol::membership::sign_datagram(&Identity::from_seed([1; 32]), &payload);
    write("membership", "gossip", &[vec![0], datagram].concat())?;
    let credential = protocol::membership::Credential::issue(&coordinator, Identity::from_seed([1; 32]).id(), "127.0.0.1:7001".parse().expect("addr"), t0);
    write("membership", "credential", &[vec![1], credential.to_bytes()].concat())?;
    write("membership", "steps", &[2; 256])?;
    write("membership", "ramp", &(0..=255u8).cycle().skip(2).take(1024).collect::<Vec<u8>>())?;
    Ok(())
}

/// The worker's SWIM identity type, as the `membership` target includes it.
#[allow(dead_code)]
#[path = "../../worker/src/membership/gate.rs"]
mod gate;
