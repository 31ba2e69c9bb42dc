//! Every protobuf → domain conversion in `proto::wire`, on arbitrary bytes.
//!
//! The first byte picks the message type; the rest is decoded with prost as that message
//! (exactly what tonic does with a request body) and converted. Nothing may panic, and
//! whatever a conversion accepts must survive domain → protobuf → domain unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1 as pb;
use protocol::claim::Commitment;
use protocol::failure::MAX_DETAIL;
use protocol::identity::{Registration, verify_registration};
use protocol::manifest::ProjectSpec;
use proto::wire::{claims_from_wire, claims_to_wire, failure_from_wire, limits_from_wire};
use protocol::evidence::Evidence;
use protocol::{Claim, WorkerId};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 10 {
        0 => claim(bytes),
        1 => commitment(bytes),
        2 => evidence(bytes),
        3 => submit_project(bytes),
        4 => limits(bytes),
        5 => failure_report(bytes),
        6 => certificate_submission(bytes),
        7 => dispute(bytes),
        8 => unit_view(bytes),
        _ => register_worker(bytes),
    }
});

fn claim(bytes: &[u8]) {
    let Ok(wire) = pb::Claim::decode(bytes) else {
        return;
    };
    if let Ok(c) = Claim::try_from(wire.clone()) {
        // Every field of pb::Claim is known and fixed-size once accepted: exact round trip.
        assert_eq!(pb::Claim::from(&c), wire);
        let _ = c.verify();
        assert!(c.opens(&c.commitment()));
    }
}

fn commitment(bytes: &[u8]) {
    let Ok(wire) = pb::Commitment::decode(bytes) else {
        return;
    };
    if let Ok(c) = Commitment::try_from(wire.clone()) {
        assert_eq!(pb::Commitment::from(&c), wire);
        let _ = c.verify();
    }
}

fn evidence(bytes: &[u8]) {
    let Ok(wire) = pb::Evidence::decode(bytes) else {
        return;
    };
    let Ok(e) = Evidence::try_from(wire) else {
        return;
    };
    let back = Evidence::try_from(pb::Evidence::from(&e)).expect("accepted evidence round-trips");
    assert_eq!(back, e);
    if let Ok((worker, unit)) = e.offender() {
        // Evidence that names an offender names the signer of both messages.
        let (first, second) = match &e {
            Evidence::Mismatch(c, claim) => (c.clone(), claim.commitment()),
            Evidence::Equivocation(a, b) => (a.clone(), b.clone()),
        };
        assert_eq!((first.worker, first.unit), (worker, unit));
        assert_eq!((second.worker, second.unit), (worker, unit));
        assert_ne!(first.seal, second.seal);
        assert!(first.verify().is_ok() && second.verify().is_ok());
    }
}

fn submit_project(bytes: &[u8]) {
    let Ok(wire) = pb::SubmitProjectRequest::decode(bytes) else {
        return;
    };
    let Ok(spec) = ProjectSpec::try_from(wire) else {
        return;
    };
    // The coordinator accepts what the CLI would: a 1-100 character printable name.
    assert!(spec.name.len() <= 100, "accepted a {}-byte name", spec.name.len());
    assert!(!spec.name.chars().any(char::is_control), "accepted name {:?}", spec.name);
    let again = ProjectSpec::try_from(pb::SubmitProjectRequest::from(spec.clone()))
        .expect("an accepted project is accepted again after a round trip");
    assert_eq!(again.name, spec.name);
    assert_eq!(again.module, spec.module);
    assert_eq!(again.reducer, spec.reducer);
    assert_eq!(
        (again.replication, again.quorum, again.max_replicas, again.adaptive),
        (spec.replication, spec.quorum, spec.max_replicas, spec.adaptive)
    );
    assert_eq!(again.error_bound.to_bits(), spec.error_bound.to_bits());
    assert_eq!(again.limits, spec.limits);
    assert_eq!(again.units, spec.units);
    assert_eq!(again.manifest, spec.manifest);
    assert_eq!(again.signatures, spec.signatures);
    // Checking the signatures never panics, and passes only for a signed project.
    if spec.verify_signatures().is_ok() {
        assert!(spec.signatures.is_some());
    }
}

fn limits(bytes: &[u8]) {
    // An empty body decodes as all-default fields; `None` stands for a missing message.
    let wire = pb::Limits::decode(bytes).ok();
    if let Ok(l) = limits_from_wire(wire) {
        assert!(l.validate().is_ok());
        assert_eq!(limits_from_wire(Some(pb::Limits::from(l))).ok(), Some(l));
    }
}

fn failure_report(bytes: &[u8]) {
    let Ok(wire) = pb::FailureReport::decode(bytes) else {
        return;
    };
    let detail = wire.detail.clone();
    if let Ok(f) = failure_from_wire(wire.kind, wire.detail) {
        assert_eq!(pb::FailureKind::from(f.kind) as i32, wire.kind);
        // Cut on a character boundary to MAX_DETAIL bytes, plus the '…' marking the cut.
        assert!(f.detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(detail.starts_with(f.detail.trim_end_matches('…')));
        let _ = f.to_string();
    }
}

fn certificate_submission(bytes: &[u8]) {
    let Ok(wire) = pb::CertificateSubmission::decode(bytes) else {
        return;
    };
    if let Ok(claims) = claims_from_wire(wire.claims.clone()) {
        assert_eq!(claims_to_wire(&claims), wire.claims);
    }
}

fn dispute(bytes: &[u8]) {
    let Ok(wire) = pb::Dispute::decode(bytes) else {
        return;
    };
    let _ = WorkerId::from_slice("Dispute.public_key", &wire.public_key);
    if let Ok(claims) = claims_from_wire(wire.claims) {
        for c in &claims {
            let _ = c.verify();
        }
    }
}

fn unit_view(bytes: &[u8]) {
    // What a board answers a holder (converted in worker::rpc with these same conversions).
    let Ok(wire) = pb::UnitView::decode(bytes) else {
        return;
    };
    let _ = claims_from_wire(wire.reveals);
    for c in wire.committed {
        let _ = Commitment::try_from(c);
    }
}

fn register_worker(bytes: &[u8]) {
    let Ok(wire) = pb::RegisterWorkerRequest::decode(bytes) else {
        return;
    };
    let Ok(worker) = WorkerId::from_slice("RegisterWorkerRequest.public_key", &wire.public_key)
    else {
        return;
    };
    let registration = Registration {
        name: &wire.name,
        account: &wire.account,
        team: &wire.team,
        peer_addr: &wire.peer_addr,
    };
    let _ = verify_registration(worker, &registration, &wire.signature);
}
