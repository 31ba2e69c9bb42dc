//! The store's test suite, run against both back-ends: the embedded SQLite store in a
//! temporary directory and the PostgreSQL store in a throwaway cluster ([`testpg`]). A test
//! that only one back-end can run lives beside that back-end.

use protocol::certificate::Verified;
use protocol::manifest::ProjectSpec;
use protocol::provenance::{Signer, SubmitterKey};
use protocol::{Claim, Digest, Failure, FailureKind, Identity, Limits, UnitId};

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::testpg::TestPg;
use super::*;
use crate::scheduler::{Aggregate, AssignmentState, Change, UnitStatus};

/// Where a store lives for one test, and what a test needs to do behind its back.
trait Backend: Sized {
    type S: Store + Clone + std::fmt::Debug;
    /// A new, empty place for a store.
    fn new() -> Self;
    /// Opens (creating it the first time) the store there.
    async fn open(&self) -> Result<Self::S, Error>;
    /// Writes schema version `version` into the store, as a newer Fallow would.
    async fn set_version(&self, store: &Self::S, version: i64);
    /// Changes a verified unit's stored output behind the store's back, the way damage at
    /// rest would, and checks that the database's own checks do not notice.
    async fn change_output(&self, store: &Self::S, unit: UnitId, output: &[u8]);
}

struct Sqlite(tempfile::TempDir);

impl Backend for Sqlite {
    type S = SqliteStore;
    fn new() -> Self {
        Sqlite(tempfile::tempdir().expect("tempdir"))
    }
    async fn open(&self) -> Result<SqliteStore, Error> {
        SqliteStore::open(self.0.path()).await
    }
    async fn set_version(&self, store: &SqliteStore, version: i64) {
        sqlx::raw_sql(&format!("PRAGMA user_version = {version}"))
            .execute(&store.pool)
            .await
            .expect("set version");
    }
    async fn change_output(&self, store: &SqliteStore, unit: UnitId, output: &[u8]) {
        sqlx::query("UPDATE units SET output = $1 WHERE id = $2")
            .bind(output)
            .bind(unit.0 as i64)
            .execute(&store.pool)
            .await
            .expect("tamper");
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&store.pool)
            .await
            .expect("integrity check");
        assert_eq!(integrity, "ok", "SQLite cannot see it");
    }
}

struct Postgres(TestPg);

impl Backend for Postgres {
    type S = PostgresStore;
    fn new() -> Self {
        Postgres(TestPg::start())
    }
    async fn open(&self) -> Result<PostgresStore, Error> {
        PostgresStore::connect(&self.0.url()).await
    }
    async fn set_version(&self, store: &PostgresStore, version: i64) {
        sqlx::query("UPDATE schema_version SET version = $1")
            .bind(version)
            .execute(&store.pool)
            .await
            .expect("set version");
    }
    async fn change_output(&self, store: &PostgresStore, unit: UnitId, output: &[u8]) {
        sqlx::query("UPDATE units SET output = $1 WHERE id = $2")
            .bind(output)
            .bind(unit.0 as i64)
            .execute(&store.pool)
            .await
            .expect("tamper");
    }
}

/// One `#[tokio::test]` per back-end for each test of the suite.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name::<super::Sqlite>().await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name::<super::Postgres>().await
                }
            )*
        }
    };
}

suite!(
    credit_past_the_integer_range_loads_and_saturates,
    state_survives_reopening_and_results_are_recorded_once,
    reopening_a_unit_withdraws_its_output_and_the_liars_credit_once,
    a_unit_handed_back_can_be_leased_again_to_the_same_worker,
    a_signed_project_keeps_its_signer_and_unit_signatures,
    a_second_coordinator_on_the_same_store_is_refused,
    a_database_from_a_newer_version_is_refused,
    an_output_changed_at_rest_is_refused_when_read,
    same_units_compares_names_and_inputs_in_order,
    the_group_commit_applies_every_write_in_order_or_none,
    data_files_are_held_only_once_finished_and_projects_keep_their_list,
    project_control_survives_reopening,
);

/// `load` and `load_units` together, with the unit counters applied to the projects.
pub(super) async fn load_all<S: Store>(store: &S) -> (Snapshot, Vec<StoredUnit>) {
    let mut snapshot = store.load().await.expect("load");
    let mut units = Vec::new();
    let counts = store
        .load_units(|u| units.push(u))
        .await
        .expect("load units");
    for p in &mut snapshot.projects {
        if let Some(c) = counts.get(&p.id) {
            p.stats.total += c.total;
            p.stats.verified += c.verified;
            p.stats.failed += c.failed;
            p.stats.cancelled += c.cancelled;
            p.stats.executions += c.executions;
        }
    }
    (snapshot, units)
}

/// The outputs of a page, all of which must have passed their digest check.
pub(super) fn intact(page: Vec<StoredOutput>) -> Vec<VerifiedOutput> {
    page.into_iter()
        .map(|o| match o {
            StoredOutput::Intact(v) => v,
            StoredOutput::Corrupt(c) => panic!("{c} failed its digest check"),
        })
        .collect()
}

pub(super) fn spec() -> ProjectSpec {
    ProjectSpec {
        name: "p".into(),
        module: b"\0asm\x01\0\0\0".to_vec(),
        reducer: None,
        replication: 2,
        quorum: 2,
        max_replicas: 5,
        adaptive: true,
        error_bound: 0.02,
        limits: Limits::default(),
        units: vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
        manifest: String::new(),
        data: Vec::new(),
        data_paths: Vec::new(),
        signatures: None,
    }
}

/// Credit rows whose integer sum passes 2^63 (what inflated fuel claims once stored)
/// neither stop the store from loading nor the leaderboard from answering: credit is
/// summed with `TOTAL` and saturates.
async fn credit_past_the_integer_range_loads_and_saturates<B: Backend>() {
    let b = B::new();
    let w1 = Identity::from_seed([1; 32]).id();
    let w2 = Identity::from_seed([2; 32]).id();
    let store = b.open().await.expect("open");
    let (_, units) = store
        .insert_project(&spec(), Digest::of(b"m"), None, 1)
        .await
        .expect("insert");
    let verified = Verified {
        digest: Digest::of(b"out"),
        fuel: i64::MAX as u64,
        signers: vec![w1, w2],
    };
    let credit = [w1, w2].map(|worker| CreditTo {
        worker,
        account: "colluders".into(),
        team: "lab".into(),
    });
    store
        .record_verified(units[0], b"out", &verified, &credit, 3)
        .await
        .expect("record");
    let (snapshot, _) = load_all(&store).await;
    assert!(snapshot.projects[0].stats.credit >= i64::MAX as u64);
    let (accounts, teams) = store.leaderboard().await.expect("leaderboard");
    assert!(accounts[0].credit >= i64::MAX as u64, "{accounts:?}");
    assert!(teams[0].credit >= i64::MAX as u64);
}

async fn state_survives_reopening_and_results_are_recorded_once<B: Backend>() {
    let b = B::new();
    let w1 = Identity::from_seed([1; 32]).id();
    let w2 = Identity::from_seed([2; 32]).id();
    let (project, units) = {
        let store = b.open().await.expect("open");
        let (project, units) = store
            .insert_project(&spec(), Digest::of(b"m"), None, 1)
            .await
            .expect("insert");
        store
            .insert_assignments(&[(units[0], w1), (units[0], w2), (units[1], w1)], 2)
            .await
            .expect("assign");
        let verified = Verified {
            digest: Digest::of(b"out"),
            fuel: 7,
            signers: vec![w1, w2],
        };
        let credit = [
            CreditTo {
                worker: w1,
                account: "alice".into(),
                team: "lab".into(),
            },
            CreditTo {
                worker: w2,
                account: "bob".into(),
                team: "lab".into(),
            },
        ];
        assert!(
            store
                .record_verified(units[0], b"out", &verified, &credit, 3)
                .await
                .expect("first")
        );
        assert!(
            !store
                .record_verified(units[0], b"out", &verified, &credit, 4)
                .await
                .expect("second"),
            "counted once"
        );
        let (accounts, teams) = store.leaderboard().await.expect("leaderboard");
        assert_eq!(
            accounts
                .iter()
                .map(|a| (a.name.as_str(), a.credit))
                .collect::<Vec<_>>(),
            [("alice", 7), ("bob", 7)]
        );
        assert_eq!(
            (teams[0].name.as_str(), teams[0].credit, teams[0].accounts),
            ("lab", 14, 2)
        );
        store
            .apply(
                &[
                    Change::Replica {
                        unit: units[1],
                        worker: w1,
                        state: AssignmentState::Failed,
                        failure: Some(Failure::new(FailureKind::FuelExhausted, "used all fuel")),
                    },
                    Change::Target {
                        unit: units[1],
                        target: 3,
                    },
                ],
                5,
            )
            .await
            .expect("apply");
        store
            .set_aggregate(project, Err("reducer failed: exit code 2".into()))
            .await
            .expect("aggregate");
        (project, units)
    };
    let store = b.open().await.expect("reopen");
    let (snapshot, loaded) = load_all(&store).await;
    let p = &snapshot.projects[0];
    assert_eq!(
        (
            p.id,
            p.stats.total,
            p.stats.verified,
            p.stats.credit,
            p.stats.disputes
        ),
        (project, 2, 1, 14, 1)
    );
    // Stores before 2026-12 kept the reason with a "reducer failed: " in front, which
    // status then doubled: it is read without.
    assert_eq!(p.aggregate, Aggregate::Failed("exit code 2".into()));
    assert_eq!(
        store.aggregate(project).await.expect("aggregate"),
        Some(Err("exit code 2".into()))
    );
    let b = loaded.iter().find(|u| u.id == units[1]).expect("unit b");
    assert_eq!(b.target, 3);
    assert_eq!(
        b.replicas[0].2.as_ref().map(|f| f.kind),
        Some(FailureKind::FuelExhausted)
    );
    let outputs = intact(
        store
            .verified_outputs(project, None, 10)
            .await
            .expect("outputs"),
    );
    assert_eq!(
        (
            outputs.len(),
            outputs[0].name.as_str(),
            outputs[0].output.as_slice()
        ),
        (1, "a", &b"out"[..])
    );
    assert_eq!(outputs[0].signers.len(), 2);
    assert_eq!(
        outputs[0].verified_ms, 3,
        "the first record's time, not the second's"
    );
    // By id (`fallow results --follow`): only verified units of this project come back.
    let of = intact(
        store
            .verified_outputs_of(project, &[units[1], units[0], UnitId(u64::MAX)])
            .await
            .expect("outputs of"),
    );
    assert_eq!(
        of.iter()
            .map(|o| (o.unit, o.name.as_str()))
            .collect::<Vec<_>>(),
        [(units[0], "a")]
    );
    assert!(
        store
            .verified_outputs_of(ProjectId(project.0 + 1), &[units[0]])
            .await
            .expect("other project")
            .is_empty()
    );
}

async fn reopening_a_unit_withdraws_its_output_and_the_liars_credit_once<B: Backend>() {
    let b = B::new();
    let (w1, w2) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let store = b.open().await.expect("open");
    let (project, units) = store
        .insert_project(&spec(), Digest::of(b"m"), None, 1)
        .await
        .expect("insert");
    let solo = Verified {
        digest: Digest::of(b"lie"),
        fuel: 7,
        signers: vec![w1.id()],
    };
    let to = |w: &Identity, a: &str| CreditTo {
        worker: w.id(),
        account: a.into(),
        team: String::new(),
    };
    store
        .record_verified(units[0], b"lie", &solo, &[to(&w1, "liar")], 2)
        .await
        .expect("solo");
    let reopen = Change::Reopen {
        unit: units[0],
        revoke: w1.id(),
        required: 2,
    };
    // Applying the same re-open twice (a retried request) withdraws once.
    store
        .apply(std::slice::from_ref(&reopen), 3)
        .await
        .expect("reopen");
    store.apply(&[reopen], 3).await.expect("again");
    assert!(
        store
            .verified_outputs(project, None, 10)
            .await
            .expect("outputs")
            .is_empty()
    );
    let vote = Claim::sign(&w2, project, units[0], Digest::of(b"ok"), 7);
    store
        .apply(
            &[Change::Vote {
                claim: vote.clone(),
            }],
            4,
        )
        .await
        .expect("vote");
    let (_, loaded) = load_all(&store).await;
    let u = loaded.iter().find(|u| u.id == units[0]).expect("unit");
    assert_eq!(
        (u.status.clone(), u.required, u.votes.clone()),
        (UnitStatus::Pending, 2, vec![vote])
    );
    let (accounts, _) = store.leaderboard().await.expect("leaderboard");
    assert!(
        accounts.iter().all(|a| a.name != "liar" || a.credit == 0),
        "{accounts:?}"
    );
}

async fn a_unit_handed_back_can_be_leased_again_to_the_same_worker<B: Backend>() {
    let b = B::new();
    let store = b.open().await.expect("open");
    let w = Identity::from_seed([1; 32]).id();
    let (_, units) = store
        .insert_project(&spec(), Digest::of(b"m"), None, 1)
        .await
        .expect("insert");
    store
        .insert_assignments(&[(units[0], w)], 2)
        .await
        .expect("lease");
    store
        .apply(
            &[Change::Replica {
                unit: units[0],
                worker: w,
                state: AssignmentState::Returned,
                failure: None,
            }],
            3,
        )
        .await
        .expect("hand back");
    store
        .insert_assignments(&[(units[0], w)], 4)
        .await
        .expect("lease again");
    let (_, loaded) = load_all(&store).await;
    let replicas = &loaded
        .iter()
        .find(|u| u.id == units[0])
        .expect("unit")
        .replicas;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(replicas[0].1, AssignmentState::Active);
}

async fn a_signed_project_keeps_its_signer_and_unit_signatures<B: Backend>() {
    let b = B::new();
    let alice = Identity::from_seed([4; 32]);
    let mut signed = spec();
    signed.units = (0..450).map(|i| (format!("u{i}"), vec![i as u8])).collect();
    signed.sign(&alice);
    let (project, units) = {
        let store = b.open().await.expect("open");
        store
            .insert_project(&signed, Digest::of(&signed.module), None, 1)
            .await
            .expect("insert")
    };
    let store = b.open().await.expect("reopen");
    let (snap, _) = load_all(&store).await;
    let p = snap
        .projects
        .iter()
        .find(|p| p.id == project)
        .expect("project");
    assert_eq!(
        p.signer,
        Some(Signer {
            key: SubmitterKey::of(&alice),
            terms: signed.terms(),
        })
    );
    // Units past the first insert chunks of 200 keep their own signatures.
    let inputs = store
        .unit_inputs(&[units[0], units[449], units[201]])
        .await
        .expect("inputs");
    let sigs = &signed.signatures.as_ref().expect("signed").units;
    for got in inputs {
        let i = units
            .iter()
            .position(|u| *u == got.unit)
            .expect("one of ours");
        assert_eq!(got.name, format!("u{i}"));
        assert_eq!(got.signature, Some(sigs[i]), "unit {i}");
    }
}

/// A data file is readable only once its upload finished; a second upload of the same file
/// leaves one copy; a failed upload leaves nothing; a project keeps its data list across a
/// reopen.
async fn data_files_are_held_only_once_finished_and_projects_keep_their_list<B: Backend>() {
    use protocol::data::{CHUNK_BYTES, DataFile};
    let b = B::new();
    let store = b.open().await.expect("open");
    let bytes: Vec<u8> = (0..CHUNK_BYTES * 2 + 10).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&bytes);
    let (up1, up2, bad) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        store
            .put_data_chunk(up1, i as u64, chunk)
            .await
            .expect("chunk");
    }
    assert!(store.data_held(&[digest]).await.expect("held").is_empty());
    assert_eq!(
        store.data_chunk(digest, 0).await.expect("read"),
        None,
        "unfinished"
    );
    assert!(
        !store
            .finish_data(up1, digest, bytes.len() as u64)
            .await
            .expect("finish")
    );
    // The same file again (another coordinator, say): kept once.
    for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        store
            .put_data_chunk(up2, i as u64, chunk)
            .await
            .expect("chunk");
    }
    assert!(
        store
            .finish_data(up2, digest, bytes.len() as u64)
            .await
            .expect("finish")
    );
    store.put_data_chunk(bad, 0, b"junk").await.expect("chunk");
    store.discard_data(bad).await.expect("discard");
    assert_eq!(store.data_chunk(Digest(bad), 0).await.expect("read"), None);
    let held = store
        .data_held(&[digest, Digest([9; 32])])
        .await
        .expect("held");
    assert_eq!(
        held.into_iter().collect::<Vec<_>>(),
        [(digest, bytes.len() as u64)]
    );
    let mut read = Vec::new();
    for i in 0.. {
        match store.data_chunk(digest, i).await.expect("read") {
            Some(c) => read.extend_from_slice(&c),
            None => break,
        }
    }
    assert_eq!(read, bytes);
    let mut with_data = spec();
    with_data.data = vec![DataFile {
        name: "table".into(),
        size: bytes.len() as u64,
        digest,
    }];
    let (project, _) = store
        .insert_project(&with_data, Digest::of(&with_data.module), None, 1)
        .await
        .expect("insert");
    drop(store);
    let store = b.open().await.expect("reopen");
    let (snap, _) = load_all(&store).await;
    let p = snap
        .projects
        .iter()
        .find(|p| p.id == project)
        .expect("project");
    assert_eq!(&p.data[..], &with_data.data[..]);
}

async fn a_second_coordinator_on_the_same_store_is_refused<B: Backend>() {
    let b = B::new();
    let _first = b.open().await.expect("first");
    let err = b.open().await.expect_err("second opened").to_string();
    assert!(err.contains("another coordinator"), "{err}");
}

async fn a_database_from_a_newer_version_is_refused<B: Backend>() {
    let b = B::new();
    drop(b.open().await.expect("create"));
    let store = b.open().await.expect("open");
    b.set_version(&store, 99).await;
    drop(store);
    let err = b
        .open()
        .await
        .expect_err("newer schema accepted")
        .to_string();
    assert!(err.contains("newer Fallow"), "{err}");
}

/// A unit verified with output `out` (digest and credit as a certificate gives them).
pub(super) async fn verify<S: Store>(store: &S, unit: UnitId, out: &[u8]) {
    let w1 = Identity::from_seed([1; 32]).id();
    let w2 = Identity::from_seed([2; 32]).id();
    store
        .insert_assignments(&[(unit, w1), (unit, w2)], 2)
        .await
        .expect("lease");
    let verified = Verified {
        digest: Digest::of(out),
        fuel: 7,
        signers: vec![w1, w2],
    };
    let credit = [w1, w2].map(|worker| CreditTo {
        worker,
        account: worker.to_string(),
        team: String::new(),
    });
    assert!(
        store
            .record_verified(unit, out, &verified, &credit, 3)
            .await
            .expect("record")
    );
}

/// One byte changed inside a stored output passes every check of the database; the digest check
/// on read refuses it, naming the unit, and sending it back keeps the signers' credit.
async fn an_output_changed_at_rest_is_refused_when_read<B: Backend>() {
    let b = B::new();
    let store = b.open().await.expect("open");
    let (project, units) = store
        .insert_project(&spec(), Digest::of(b"m"), None, 1)
        .await
        .expect("insert");
    verify(&store, units[0], b"41\n").await;
    verify(&store, units[1], b"42\n").await;
    b.change_output(&store, units[1], b"43\n").await;
    let page = store
        .verified_outputs(project, None, 10)
        .await
        .expect("outputs");
    assert!(matches!(&page[0], StoredOutput::Intact(v) if v.output == b"41\n"));
    match &page[1] {
        StoredOutput::Corrupt(c) => {
            assert_eq!((c.unit, c.name.as_str()), (units[1], "b"));
            assert_eq!(c.to_string(), format!("unit \"b\" (id {})", units[1]));
        }
        StoredOutput::Intact(v) => panic!("served {:?}", v.output),
    }
    let ran = store.unit_workers(units[1]).await.expect("workers");
    assert_eq!(ran.len(), 2);
    store
        .apply(
            &[Change::Reverify {
                unit: units[1],
                required: 2,
            }],
            4,
        )
        .await
        .expect("send back");
    let page = intact(
        store
            .verified_outputs(project, None, 10)
            .await
            .expect("outputs"),
    );
    assert_eq!(page.len(), 1, "only the intact output is listed");
    let (_, loaded) = load_all(&store).await;
    let u = loaded.iter().find(|u| u.id == units[1]).expect("unit");
    assert_eq!(u.status, UnitStatus::Pending);
    assert!(
        u.replicas
            .iter()
            .all(|r| r.1 == AssignmentState::Superseded),
        "{:?}",
        u.replicas
    );
    let (accounts, _) = store.leaderboard().await.expect("leaderboard");
    assert!(
        accounts.iter().all(|a| a.verified == 2),
        "the signers keep their credit: {accounts:?}"
    );
}

async fn same_units_compares_names_and_inputs_in_order<B: Backend>() {
    let b = B::new();
    let store = b.open().await.expect("open");
    let (project, _) = store
        .insert_project(&spec(), Digest::of(b"m"), None, 1)
        .await
        .expect("insert");
    let same = |units: Vec<(&str, &[u8])>| {
        let units: Vec<(String, Vec<u8>)> = units
            .into_iter()
            .map(|(n, i)| (n.to_string(), i.to_vec()))
            .collect();
        let store = store.clone();
        async move { store.same_units(project, &units).await.expect("compare") }
    };
    assert!(same(vec![("a", b"1"), ("b", b"2")]).await);
    assert!(!same(vec![("a", b"1"), ("b", b"3")]).await, "another input");
    assert!(!same(vec![("b", b"2"), ("a", b"1")]).await, "another order");
    assert!(!same(vec![("a", b"1")]).await, "fewer units");
    assert!(!same(vec![("a", b"1"), ("b", b"2"), ("c", b"3")]).await);
}

/// Each way a store is lost or damaged, refused with the problem and the way out; a
/// new directory, and a healthy store with --start-afresh, open as usual.
/// The writes of many requests in one call land together and in order; when one of them
/// fails (a lease of a unit that does not exist), none of them does.
async fn the_group_commit_applies_every_write_in_order_or_none<B: Backend>() {
    let b = B::new();
    let store = b.open().await.expect("open");
    let (w1, w2) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let (project, units) = store
        .insert_project(&spec(), Digest::of(b"m"), None, 1)
        .await
        .expect("insert");
    let worker = |w: &Identity, name: &str| StoredWorker {
        id: w.id(),
        name: name.into(),
        peer_addr: "127.0.0.1:1".into(),
        cores: 2,
        account: name.into(),
        team: "lab".into(),
        platform: "linux-x86_64".into(),
        subnet: None,
    };
    let out = b"8\n".to_vec();
    let verified = Verified {
        digest: Digest::of(&out),
        fuel: 9,
        signers: vec![w1.id(), w2.id()],
    };
    let credit: Vec<CreditTo> = [(&w1, "alice"), (&w2, "bob")]
        .map(|(w, a)| CreditTo {
            worker: w.id(),
            account: a.into(),
            team: "lab".into(),
        })
        .to_vec();
    let vote = Claim::sign(&w1, project, units[1], Digest::of(b"x"), 3);
    // The same lease twice in one write (a unit handed back and leased again).
    let lease = (units[0], w1.id());
    store
        .write(&[
            (Write::Worker(worker(&w1, "alice")), 2),
            (Write::Worker(worker(&w2, "bob")), 2),
            (
                Write::Assignments(vec![lease, (units[0], w2.id()), lease, (units[1], w1.id())]),
                3,
            ),
            (
                Write::Changes(vec![
                    Change::Vote {
                        claim: vote.clone(),
                    },
                    // A vote on a unit this group verifies later: gone with its votes.
                    Change::Vote {
                        claim: Claim::sign(&w2, project, units[0], Digest::of(b"y"), 3),
                    },
                    // Trust changed twice in one group: the last one stays.
                    Change::Trust {
                        worker: w2.id(),
                        project,
                        consecutive: 1,
                        offences: 0,
                    },
                    Change::Trust {
                        worker: w2.id(),
                        project,
                        consecutive: 2,
                        offences: 1,
                    },
                    Change::Replica {
                        unit: units[1],
                        worker: w1.id(),
                        state: AssignmentState::Failed,
                        failure: Some(Failure::new(FailureKind::Trap, "unreachable")),
                    },
                    Change::Replica {
                        unit: units[1],
                        worker: w1.id(),
                        state: AssignmentState::Returned,
                        failure: None,
                    },
                ]),
                4,
            ),
            (
                Write::Verified {
                    unit: units[0],
                    output: out.clone(),
                    verified: verified.clone(),
                    credit: credit.clone(),
                },
                5,
            ),
            // Settled already: changes nothing, credits nobody twice.
            (
                Write::Verified {
                    unit: units[0],
                    output: b"other".to_vec(),
                    verified: verified.clone(),
                    credit,
                },
                6,
            ),
        ])
        .await
        .expect("write");
    let (snapshot, loaded) = load_all(&store).await;
    assert_eq!(snapshot.workers.len(), 2);
    assert_eq!(snapshot.projects[0].stats.credit, 18);
    let a = loaded.iter().find(|u| u.id == units[0]).expect("a");
    assert_eq!(
        (a.status.clone(), a.replicas.len()),
        (UnitStatus::Verified, 2)
    );
    assert!(
        a.votes.is_empty(),
        "a verified unit keeps no votes: {:?}",
        a.votes
    );
    let trust: Vec<_> = snapshot
        .trust
        .iter()
        .filter(|(w, p, _)| *w == w2.id() && *p == project)
        .map(|(_, _, t)| (t.consecutive, t.offences))
        .collect();
    assert_eq!(trust, vec![(2, 1)], "the last trust of the group stays");
    let u = loaded.iter().find(|u| u.id == units[1]).expect("b");
    assert_eq!(u.votes, vec![vote]);
    assert_eq!(u.replicas.len(), 1);
    assert_eq!(
        (u.replicas[0].1, u.replicas[0].2.is_none()),
        (AssignmentState::Returned, true),
        "the later change wins"
    );
    let page = intact(
        store
            .verified_outputs(project, None, 10)
            .await
            .expect("outputs"),
    );
    assert_eq!((page.len(), page[0].output.as_slice()), (1, &out[..]));
    let (accounts, _) = store.leaderboard().await.expect("leaderboard");
    assert!(
        accounts.iter().all(|a| a.credit == 9 && a.verified == 1),
        "{accounts:?}"
    );

    // A lease of a unit that does not exist fails the whole call: the registration before
    // it in the same call is not kept.
    let w3 = Identity::from_seed([3; 32]);
    let err = store
        .write(&[
            (Write::Worker(worker(&w3, "carol")), 7),
            (Write::Assignments(vec![(UnitId(999_999), w3.id())]), 7),
        ])
        .await;
    assert!(err.is_err(), "a lease of no unit was written");
    let (snapshot, _) = load_all(&store).await;
    assert_eq!(snapshot.workers.len(), 2, "all or none");
}

/// One schema history: after opening, both back-ends have the same tables with the same
/// columns, but for what SQLite has implicitly (see `schema::POSTGRES`).
#[tokio::test]
async fn both_back_ends_have_the_same_tables_and_columns() {
    let sqlite = Sqlite::new();
    let sqlite = sqlite.open().await.expect("sqlite");
    let pg = Postgres::new();
    let pg = pg.open().await.expect("postgres");
    let mut lite: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' ORDER BY 1, 2",
    )
    .fetch_all(&sqlite.pool)
    .await
    .expect("sqlite columns");
    lite.sort();
    let mut postgres: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() ORDER BY 1, 2",
    )
    .fetch_all(&pg.pool)
    .await
    .expect("postgres columns");
    postgres.retain(|(t, c)| t != "schema_version" && !(t == "assignments" && c == "seq"));
    postgres.sort();
    assert_eq!(postgres, lite);
}

/// A database that cannot be reached is named, without its password, with what to check.
#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://fallow:hunter2@127.0.0.1:{port}/fallow");
    let err = PostgresStore::connect(&url)
        .await
        .expect_err("connected to nothing")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "database postgres://fallow@127.0.0.1:{port}/fallow: cannot connect"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// A database that holds someone else's tables is refused, not written into.
#[tokio::test]
async fn a_database_of_something_else_is_refused() {
    let pg = TestPg::start();
    let url = pg.create_database("other");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::raw_sql("CREATE TABLE invoices (id BIGINT)")
        .execute(&pool)
        .await
        .expect("create");
    let err = PostgresStore::connect(&url)
        .await
        .expect_err("opened")
        .to_string();
    assert!(err.contains("not a Fallow store"), "{err}");
}

/// A second coordinator on a held database stands by, is told who holds it, and takes the
/// database over as soon as the holder goes (its session ends, as with kill -9).
#[tokio::test]
async fn a_standby_waits_for_the_holder_and_takes_over_when_it_goes() {
    let pg = TestPg::start();
    let url = pg.url();
    let active = PostgresStore::stand_by(&url, "fallow coordinator a", |_| {
        panic!("the first coordinator stood by")
    })
    .await
    .expect("active");
    let (told, mut heard) = tokio::sync::mpsc::unbounded_channel();
    // Polled here rather than spawned: sqlx's connection futures are not `Send` for every
    // lifetime, which `tokio::spawn` asks.
    let standby = PostgresStore::stand_by(&url, "fallow coordinator b", move |holder| {
        let _ = told.send(holder.cloned());
    });
    tokio::pin!(standby);
    let holder = tokio::select! {
        h = heard.recv() => h.expect("told"),
        _ = &mut standby => panic!("took a held database"),
    };
    let holder = holder.expect("PostgreSQL shows the holder's session");
    assert_eq!(holder.application, "fallow coordinator a");
    assert!(
        holder.to_string().contains("fallow coordinator a"),
        "{holder}"
    );
    tokio::select! {
        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        _ = &mut standby => panic!("took a held database"),
    }
    // The deployment's files: the first one put wins unless replaced.
    assert!(
        active
            .put_deployment_file("tokens", b"one", false)
            .await
            .expect("put")
    );
    assert!(
        !active
            .put_deployment_file("tokens", b"two", false)
            .await
            .expect("put")
    );
    drop(active);
    let taken = tokio::time::timeout(std::time::Duration::from_secs(30), standby)
        .await
        .expect("took over within 30 s")
        .expect("store");
    let files = taken.deployment_files().await.expect("files");
    assert_eq!(files.get("tokens").map(Vec::as_slice), Some(&b"one"[..]));
    assert!(
        taken
            .put_deployment_file("tokens", b"three", true)
            .await
            .expect("replace")
    );
    let files = taken.deployment_files().await.expect("files");
    assert_eq!(files.get("tokens").map(Vec::as_slice), Some(&b"three"[..]));
}

/// The first coordinator on a database puts the deployment's key, certificate and tokens
/// there; the next one, in another data directory, loads the same.
#[tokio::test]
async fn every_coordinator_on_a_database_loads_the_first_ones_deployment() {
    let pg = TestPg::start();
    let store = PostgresStore::connect(&pg.url()).await.expect("store");
    let (first, second) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    std::fs::create_dir_all(first.path().join("tls")).expect("tls dir");
    std::fs::write(first.path().join("tls/cert.pem"), "CERT").expect("cert");
    std::fs::write(first.path().join("tls/key.pem"), "KEY").expect("key");
    assert!(
        crate::deployment::pull(&store, first.path())
            .await
            .expect("pull")
            .is_empty()
    );
    let put = crate::deployment::push(&store, first.path(), false)
        .await
        .expect("push");
    for name in [
        "coordinator.key",
        "tls/cert.pem",
        "tls/key.pem",
        "tokens",
        "admin.token",
    ] {
        assert!(put.iter().any(|p| p == name), "{name} not put: {put:?}");
    }
    // The second has a key of its own from an earlier life: the deployment's replaces it.
    std::fs::write(second.path().join("coordinator.key"), [7u8; 32]).expect("old key");
    crate::deployment::pull(&store, second.path())
        .await
        .expect("pull");
    assert!(
        crate::deployment::push(&store, second.path(), false)
            .await
            .expect("push")
            .is_empty()
    );
    for name in [
        "coordinator.key",
        "tls/cert.pem",
        "tls/key.pem",
        "tokens",
        "admin.token",
    ] {
        assert_eq!(
            std::fs::read(first.path().join(name)).expect("first"),
            std::fs::read(second.path().join(name)).expect("second"),
            "{name}"
        );
    }
}

/// What `fallow retry`, `extend`, `pause` and `cancel` change is on disk: a retried unit is
/// pending with its failed replica cleared, added units load (a taken name adds nothing),
/// the aggregate they outdate is dropped, and the control state and cancelled units load
/// after a restart.
async fn project_control_survives_reopening<B: Backend>() {
    use protocol::control::State;
    let b = B::new();
    let w = Identity::from_seed([1; 32]).id();
    let mut three = spec();
    three.units.push(("c".into(), b"3".to_vec()));
    three.reducer = Some(b"r".to_vec());
    let (project, units) = {
        let store = b.open().await.expect("open");
        let (project, units) = store
            .insert_project(&three, Digest::of(b"m"), Some(Digest::of(b"r")), 1)
            .await
            .expect("insert");
        store
            .insert_assignments(&[(units[0], w), (units[1], w)], 2)
            .await
            .expect("lease");
        let trap = Failure::new(FailureKind::Trap, "unreachable");
        store
            .apply(
                &[
                    Change::Replica {
                        unit: units[0],
                        worker: w,
                        state: AssignmentState::Failed,
                        failure: Some(trap),
                    },
                    Change::UnitFailed {
                        unit: units[0],
                        reason: "trap".into(),
                    },
                ],
                3,
            )
            .await
            .expect("fail a");
        let verified = Verified {
            digest: Digest::of(b"out"),
            fuel: 7,
            signers: vec![w],
        };
        assert!(
            store
                .record_verified(units[1], b"out", &verified, &[], 4)
                .await
                .expect("verify b")
        );
        store
            .set_aggregate(project, Ok(b"agg".to_vec()))
            .await
            .expect("aggregate");
        store
            .apply(
                &[
                    Change::Retried {
                        unit: units[0],
                        target: 2,
                        required: 2,
                    },
                    Change::Control {
                        project,
                        state: State::Paused,
                    },
                ],
                5,
            )
            .await
            .expect("retry and pause");
        // A taken name adds nothing, not even the new unit before it.
        let e = store
            .insert_units(
                project,
                &[("e".into(), b"5".to_vec()), ("b".into(), b"x".to_vec())],
                &[[1; 64], [2; 64]],
                2,
                2,
            )
            .await
            .expect_err("b is taken");
        assert!(e.to_string().contains("\"b\""), "{e}");
        let added = store
            .insert_units(project, &[("d".into(), b"4".to_vec())], &[[9; 64]], 2, 2)
            .await
            .expect("extend");
        assert_eq!(added.len(), 1);
        assert_eq!(store.aggregate(project).await.expect("read"), None);
        let inputs = store.unit_inputs(&added).await.expect("inputs");
        assert_eq!(inputs[0].name, "d");
        assert_eq!(inputs[0].signature, Some([9; 64]));
        (project, units)
    };
    {
        let store = b.open().await.expect("reopen");
        let (snap, loaded) = load_all(&store).await;
        let p = snap.projects.iter().find(|p| p.id == project).expect("p");
        assert_eq!(p.control, State::Paused);
        assert_eq!((p.stats.total, p.stats.verified, p.stats.failed), (4, 1, 0));
        assert_eq!(p.aggregate, Aggregate::Pending);
        let a = loaded.iter().find(|u| u.id == units[0]).expect("a");
        assert_eq!(a.status, UnitStatus::Pending);
        assert_eq!(a.replicas, [(w, AssignmentState::Retried, None)]);
        store
            .apply(
                &[
                    Change::Control {
                        project,
                        state: State::Cancelled,
                    },
                    Change::CancelUnits { project },
                ],
                6,
            )
            .await
            .expect("cancel");
    }
    let store = b.open().await.expect("reopen again");
    let (snap, loaded) = load_all(&store).await;
    let p = snap.projects.iter().find(|p| p.id == project).expect("p");
    assert_eq!(p.control, State::Cancelled);
    assert_eq!((p.stats.verified, p.stats.cancelled), (1, 3));
    let states: Vec<_> = loaded.iter().map(|u| u.status.clone()).collect();
    assert_eq!(
        states,
        [
            UnitStatus::Cancelled,
            UnitStatus::Verified,
            UnitStatus::Cancelled,
            UnitStatus::Cancelled
        ]
    );
    // Verified results stay.
    let outputs = intact(
        store
            .verified_outputs(project, None, 10)
            .await
            .expect("outputs"),
    );
    assert_eq!(outputs.len(), 1);
}

/// Free space on the data directory's disk bounds submissions only for the embedded store:
/// PostgreSQL's rows live on the database server.
#[tokio::test]
async fn only_the_embedded_store_lives_on_the_data_dirs_disk() {
    let lite = Sqlite::new();
    assert!(lite.open().await.expect("sqlite").on_data_dir_disk());
    let pg = Postgres::new();
    assert!(!pg.open().await.expect("postgres").on_data_dir_disk());
}
